"""Functional attention cores: pure tensor functions without parameters, inputs (B, C, H, W).

Each core has two implementations:

* the main one (``position_attention``, ``channel_attention``, ``criss_cross_attention``,
  ``axial_attention``) - memory-safe, softmax in fp32, safe under bf16/fp16 autocast and
  ``torch.compile``;
* ``*_reference`` - the plain explicit-energy formulation that mmsegmentation / mmcv compute
  (build the whole energy tensor, softmax, weighted sum), defined in ``seg.layers.functional_reference``
  and re-exported here. Tests check the two agree; ``seg.bench``
  times them against each other. ``explicit_attention()`` switches the main functions (and so every
  block in ``seg.layers``) to the references, e.g. to benchmark a whole model "as mmseg runs it".

Export (``seg.export``: ONNX, TorchScript, ``torch.export``) runs under ``export_mode()``: every core
takes its ``*_reference`` formulation, and ``seg.models.resize_bilinear`` falls back to
``F.interpolate``. The main paths do not export: the CPU query-chunk loop of ``position_attention``
is a Python loop whose trip count freezes the traced size, the CUDA path is an SDPA kernel choice,
``channel_attention``'s ``_GramFp32`` is a custom autograd Function, and the resize matrices are
built from Python ints (one traced size). The references are plain matmul + softmax, which every
exporter lowers with symbolic H and W; their HW x HW energies (DANet PAM, Non-local) are what
mmseg computes too, which is what an exported model costs at inference.

Papers: DANet (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983), Non-local (Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971),
CCNet (Huang et al., ICCV 2019, https://arxiv.org/abs/1811.11721), Axial attention (Ho et al. 2019,
https://arxiv.org/abs/1912.12180; Wang et al., ECCV 2020, https://arxiv.org/abs/2003.07853).

Memory of ``position_attention`` (the only core whose explicit energy is HW x HW):

* CUDA: ``position_attention_sdpa`` - ``F.scaled_dot_product_attention`` with the scale passed
  explicitly. In fp16/bf16, v is split into heads of the q/k width (q and k are shared by every head
  via ``expand``, no copy), so the flash / cuDNN kernels apply (they need equal q/k/v head dims
  <= 256); in fp32 one head, which the memory-efficient kernel runs (flash has no fp32).
* elsewhere (CPU, or ``chunk_size`` given): ``position_attention_chunked`` - queries are processed in
  chunks sized automatically so that one chunk's energies take about ``CHUNK_BYTES`` (``INFERENCE_CHUNK_BYTES``
  without gradients); peak extra memory
  is O(chunk * HW). When gradients are needed and there is more than one chunk, each chunk is
  recomputed in backward (activation checkpointing), so training does not store HW x HW either.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .functional_reference import (
    attended_axis,
    axial_attention_reference,
    channel_attention_reference,
    check_qkv,
    criss_cross_attention_reference,
    position_attention_reference,
)

__all__ = [
    "position_attention",
    "position_attention_chunked",
    "position_attention_sdpa",
    "position_attention_reference",
    "channel_attention",
    "channel_attention_reference",
    "criss_cross_attention",
    "criss_cross_attention_reference",
    "axial_attention",
    "axial_attention_reference",
    "explicit_attention",
    "export_mode",
    "exporting",
    "CHUNK_BYTES",
    "INFERENCE_CHUNK_BYTES",
]

#: Target size in bytes of one chunk's fp32 energies in ``position_attention_chunked`` when gradients are needed
#: (each chunk is recomputed in backward).
CHUNK_BYTES = 16 * 2**20
#: The same without gradients (inference: one reused energy buffer). Larger chunks mean fewer, larger matmuls and
#: fewer thread synchronisations: on a 2-core AMD EPYC (DANet PAM, 64x128 features, q/k 64, v 512) 512-query
#: chunks (16 MiB) took 1.7x the time of 2048-query chunks (64 MiB), the whole 8192 queries at once 1.04x; see
#: docs/benchmarks.md. 64 MiB is small next to the (HW)^2 energies it replaces (4 GiB at 1024x2048).
INFERENCE_CHUNK_BYTES = 64 * 2**20

_EXPLICIT = False
_EXPORT = False


@contextlib.contextmanager
def explicit_attention(enabled: bool = True) -> Iterator[None]:
    """Within this context the main cores run their ``*_reference`` (explicit-energy) versions."""
    global _EXPLICIT
    previous, _EXPLICIT = _EXPLICIT, enabled
    try:
        yield
    finally:
        _EXPLICIT = previous


@contextlib.contextmanager
def export_mode(enabled: bool = True) -> Iterator[None]:
    """Within this context models trace into exportable graphs (see the module docstring): the attention
    cores run their ``*_reference`` versions and ``resize_bilinear`` uses ``F.interpolate``."""
    global _EXPORT
    previous, _EXPORT = _EXPORT, enabled
    try:
        with explicit_attention() if enabled else contextlib.nullcontext():
            yield
    finally:
        _EXPORT = previous


def exporting() -> bool:
    """True inside ``export_mode()``."""
    return _EXPORT


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the promoted input dtype."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ------------------------------------------------------------------------------------------------
# position attention (DANet PAM, Non-local embedded Gaussian)


def position_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """Self-attention over all H*W positions.

    ``out[:, :, p] = sum_j softmax_j(scale * q[:, :, p] . k[:, :, j]) v[:, :, j]``

    Args:
        q: queries (B, Cq, H, W).
        k: keys (B, Cq, H, W).
        v: values (B, Cv, H, W).
        scale: multiplies the energies before the softmax (DANet PAM: 1, Non-local: 1/sqrt(Cq)).
        chunk_size: queries per chunk for the chunked path; forces that path (also on CUDA).
            ``None`` picks the fused CUDA path on GPU and an automatic chunk size elsewhere.

    Returns:
        (B, Cv, H, W), never materialising the (H*W) x (H*W) energies.
    """
    if _EXPLICIT:
        return position_attention_reference(q, k, v, scale)
    check_qkv("position_attention", q, k, v)
    if chunk_size is None and q.device.type == "cuda":
        return position_attention_sdpa(q, k, v, scale)
    return position_attention_chunked(q, k, v, scale, chunk_size)


def _attend_chunk(qc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # qc: (B, n, Cq) already scaled; k: (B, Cq, N); v: (B, Cv, N)
    energy = torch.bmm(qc, k)  # (B, n, N)
    attn = torch.softmax(energy.float(), dim=-1).to(v.dtype)  # (B, n, N), softmax in fp32
    return torch.bmm(v, attn.transpose(1, 2))  # (B, Cv, n)


_EXP_FLOOR = -87.0  # exp(-87.0) = 1.6e-38, still a normal float32


def _chunked_inference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    # q: (B, N, Cq) scaled; k: (B, Cq, N); v: (B, Cv, N). No autograd: every chunk reuses one fp32
    # energy buffer (softmax in place) and writes into one preallocated output. Allocating fresh
    # buffers per chunk fragments the heap (the small outputs land in the freed holes) and the peak
    # resident memory then grows with the number of chunks.
    b, n, _ = q.shape
    cv = v.shape[1]
    out = torch.empty(b, n, cv, dtype=v.dtype, device=v.device)  # (B, N, Cv)
    energy_buf = torch.empty(b * chunk_size * n, dtype=torch.float32, device=q.device)
    out_buf = torch.empty(b * chunk_size * cv, dtype=v.dtype, device=v.device)
    v_t = v.transpose(1, 2)  # (B, N, Cv)
    for start in range(0, n, chunk_size):
        m = min(chunk_size, n - start)
        energy = energy_buf[: b * m * n].view(b, m, n)  # (B, m, N)
        if q.dtype == torch.float32:
            torch.bmm(q[:, start : start + m], k, out=energy)
        else:
            energy.copy_(torch.bmm(q[:, start : start + m], k))
        # softmax over the keys, in place, in fp32. The floor keeps exp() out of its underflow range, which
        # PyTorch's vectorised exp computes ~6x slower: peaky energies (DANet's PAM does not scale them) put
        # most of a row there. exp(-87) = 1.6e-38 adds < N * 1.6e-38 to a row's sum: nothing at fp32 precision.
        energy.sub_(energy.amax(dim=-1, keepdim=True)).clamp_(min=_EXP_FLOOR).exp_()
        energy.div_(energy.sum(dim=-1, keepdim=True))
        attn = energy if v.dtype == torch.float32 else energy.to(v.dtype)  # (B, m, N)
        chunk_out = out_buf[: b * m * cv].view(b, m, cv)  # (B, m, Cv)
        torch.bmm(attn, v_t, out=chunk_out)
        out[:, start : start + m].copy_(chunk_out)
    return out.transpose(1, 2)  # (B, Cv, N)


def auto_chunk_size(batch: int, positions: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Queries per chunk so that one chunk's fp32 energies (batch, chunk, positions) take ~chunk_bytes."""
    return int(max(1, min(positions, chunk_bytes // max(1, 4 * batch * positions))))


def position_attention_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """``position_attention`` by query chunks: peak extra memory O(B * chunk_size * H * W)."""
    check_qkv("position_attention_chunked", q, k, v)
    b, _, h, w = q.shape
    n = h * w
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if chunk_size is None:
        chunk_size = auto_chunk_size(b, n, CHUNK_BYTES if needs_grad else INFERENCE_CHUNK_BYTES)
    if chunk_size < 1:
        raise ValueError(f"position_attention: chunk_size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(q, k, v)
    q_flat = (q.flatten(2).transpose(1, 2) * scale).to(dtype)  # (B, N, Cq), scale folded into q
    k_flat = k.flatten(2).to(dtype)  # (B, Cq, N)
    v_flat = v.flatten(2).to(dtype)  # (B, Cv, N)
    if chunk_size >= n:
        out = _attend_chunk(q_flat, k_flat, v_flat)  # (B, Cv, N)
    elif needs_grad:
        # Recompute chunks in backward instead of storing every chunk's attention (= HW x HW).
        outs = [
            checkpoint(_attend_chunk, q_flat[:, start : start + chunk_size], k_flat, v_flat, use_reentrant=False)
            for start in range(0, n, chunk_size)
        ]  # each (B, Cv, n)
        out = torch.cat(outs, dim=2)  # (B, Cv, N)
    else:
        out = _chunked_inference(q_flat, k_flat, v_flat, chunk_size)  # (B, Cv, N)
    return out.reshape(b, v.shape[1], h, w)  # (B, Cv, H, W)


def position_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, head_dim: int | None = None
) -> torch.Tensor:
    """``position_attention`` through ``F.scaled_dot_product_attention`` (the CUDA fast path).

    Fused kernels (flash, cuDNN, memory-efficient) need q, k and v with one head dim (<= 256 for
    flash/cuDNN), but DANet's PAM has q/k 64 channels and v 512. Splitting v into heads of ``head_dim``
    channels while every head shares the same q and k (``expand``: a stride-0 view, no copy) gives
    exactly the single-head result, because the attention weights do not depend on v.

    Args:
        head_dim: v channels per head. Default: fp16/bf16 - the q/k width when it divides Cv and is
            <= 256 (flash / cuDNN kernels; measured on an H100, B=8, 64x128, q/k 64, v 512: 2.7 ms vs
            6.8 ms forward and 0.6 GiB vs 10 GiB forward+backward against the explicit reference);
            fp32 (no flash kernel) and otherwise - one head with all of v (the memory-efficient kernel
            accepts a v width different from q/k; splitting would redo q.k per head: 31 ms vs 20 ms).
    """
    check_qkv("position_attention_sdpa", q, k, v)
    b, cq, h, w = q.shape
    cv = v.shape[1]
    n = h * w
    dtype = _compute_dtype(q, k, v)
    if head_dim is None:
        half = dtype in (torch.float16, torch.bfloat16)
        head_dim = cq if (half and cq <= 256 and cv % cq == 0) else cv
    if cv % head_dim != 0:
        raise ValueError(f"position_attention_sdpa: head_dim {head_dim} must divide the v channels {cv}")
    heads = cv // head_dim
    qs = q.to(dtype).flatten(2).transpose(1, 2).contiguous()[:, None]  # (B, 1, N, Cq)
    ks = k.to(dtype).flatten(2).transpose(1, 2).contiguous()[:, None]  # (B, 1, N, Cq)
    qs = qs.expand(b, heads, n, cq)  # (B, heads, N, Cq), no copy
    ks = ks.expand(b, heads, n, cq)  # (B, heads, N, Cq), no copy
    vs = v.to(dtype).reshape(b, heads, head_dim, n).transpose(2, 3)  # (B, heads, N, d)
    if vs.stride(-1) != 1:  # NCHW v; a channels_last v is already a usable view (no copy)
        vs = vs.contiguous()
    out = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)  # (B, heads, N, d)
    # The fused kernels return (B, N, heads, d) memory: read it back as channels_last (B, Cv, H, W), a view
    out = out.permute(0, 2, 1, 3).reshape(b, h, w, cv)  # (B, H, W, Cv)
    return out.permute(0, 3, 1, 2)  # (B, Cv, H, W)


# ------------------------------------------------------------------------------------------------
# channel attention (DANet CAM)


#: ``aten::bmm.dtype`` (``torch.bmm(..., out_dtype=)``, CUDA only): fp16/bf16 inputs, fp32 output.
_HAS_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")


def _energy_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32: fp16/bf16/fp32 -> fp32, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class _GramFp32(torch.autograd.Function):
    """``X X^T`` for X (B, C, N) of any float dtype, computed and returned in (at least) fp32.

    Autograd of ``bmm(X.float(), X.float().transpose(1, 2))`` would save the fp32 copy of X (twice the
    size of a bf16 X) and run two fp32 matmuls in backward, one per operand. Here only X itself is saved
    (in its own dtype; the network keeps it for other uses anyway, so no new storage), and since the
    two operands are the same tensor, backward is one matmul: ``grad_X = (G + G^T) X``.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        if _HAS_BMM_OUT_DTYPE and x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16):
            # fp16/bf16 tensor cores accumulating into fp32: X's values are exact in its own dtype, so
            # this is the fp32 product (up to summation order) without the fp32 copy of X.
            return torch.bmm(x, x.transpose(1, 2), out_dtype=torch.float32)
        xf = x.to(_energy_dtype(x.dtype))
        return torch.bmm(xf, xf.transpose(1, 2))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor | None:
        if not ctx.needs_input_grad[0]:
            return None
        (x,) = ctx.saved_tensors
        # explicit dtypes below: no autocast recasting if backward() is called inside an autocast region
        with torch.autocast(device_type=x.device.type, enabled=False):
            sym = grad + grad.transpose(1, 2)  # (B, C, C) in the energy dtype
            if x.device.type == "cuda" and x.dtype == torch.bfloat16:
                # The gradient is returned in bf16 anyway: one bf16 tensor-core matmul (fp32
                # accumulation), as autocast runs the other matmuls of the backward, instead of an fp32
                # one on an fp32 copy of X. Rounding sym to bf16 costs about one bf16 ulp per term (bf16
                # has fp32's range, so nothing overflows). fp16 (max 65504, loss-scaled gradients) and
                # CPU keep fp32.
                return torch.bmm(sym.to(x.dtype), x)
            return torch.bmm(sym, x.to(sym.dtype)).to(x.dtype)


def channel_attention(x: torch.Tensor) -> torch.Tensor:
    """DANet's channel attention aggregation (no gamma, no residual).

    ``energy = X X^T`` over channels (X: (C, HW)), ``attn = softmax(rowmax(energy) - energy)``,
    ``out = attn X``. Since softmax is shift invariant per row, ``softmax(rowmax - energy)`` equals
    ``softmax(-energy)``, which is what is computed here. The C x C energies are sums over all H*W
    positions and large: they are computed in fp32 (float64 for a float64 x) even under autocast
    (bf16 would round them by several units and wreck the softmax).

    The energies come from ``_GramFp32``, which saves only x itself for backward - not an fp32 copy of
    it (with a bf16 x: B*C*HW*4 bytes less, e.g. 128 MiB at B=8, C=512, 64x128) - and computes the
    input gradient with one matmul instead of two. On CUDA a bf16/fp16 x is multiplied on tensor cores
    with fp32 output (``torch.bmm(..., out_dtype=torch.float32)``) when this torch has it.
    """
    if _EXPLICIT:
        return channel_attention_reference(x)
    if x.dim() != 4:
        raise ValueError(f"channel_attention: x must be (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    dtype = _compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xs = x.flatten(2)  # (B, C, N)
        energy = _GramFp32.apply(xs)  # (B, C, C), fp32 (float64 for float64 x)
        attn = torch.softmax(-energy, dim=-1)  # (B, C, C)
        out = torch.bmm(attn.to(dtype), xs.to(dtype))  # (B, C, N)
    return out.reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------
# criss-cross attention (CCNet)


def criss_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention: for each pixel one softmax over the H+W-1 positions of its row and
    column (itself counted once), applied to v. No scaling of the energies (as CCNet / mmcv).

    Energies of the column part and of the row part are computed separately, O(HW(H+W)); the pixel
    itself appears in both, so it is masked (-inf, in fp32) in the column part.
    """
    if _EXPLICIT:
        return criss_cross_attention_reference(q, k, v)
    check_qkv("criss_cross_attention", q, k, v)
    h = q.shape[2]
    energy_col = torch.einsum("bchw,bciw->bhwi", q, k).float()  # (B, H, W, H): pixel vs its column
    energy_row = torch.einsum("bchw,bchj->bhwj", q, k).float()  # (B, H, W, W): pixel vs its row
    self_mask = torch.eye(h, dtype=torch.bool, device=q.device)[:, None, :]  # (H, 1, H) [h, ., i]
    energy_col = energy_col.masked_fill(self_mask, float("-inf"))
    attn = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H+W)
    attn = attn.to(_compute_dtype(v))
    out = torch.einsum("bciw,bhwi->bchw", v, attn[..., :h])  # (B, C, H, W) column part
    out = out + torch.einsum("bchj,bhwj->bchw", v, attn[..., h:])  # (B, C, H, W) row part
    return out


# ------------------------------------------------------------------------------------------------
# axial attention


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    scale: float = 1.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention along one spatial axis only.

    ``axis=-1``: each pixel attends to the W pixels of its row; ``axis=-2``: to the H pixels of its
    column. ``scale`` multiplies the energies; ``bias`` (optional, e.g. relative-position logits) is
    added to them after scaling and must broadcast to (B, L_other, L, L) = (B, H, W, W) for axis -1 and
    (B, W, H, H) for axis -2, indexed [batch, row-or-column, query, key].
    """
    if _EXPLICIT:
        return axial_attention_reference(q, k, v, axis, scale, bias)
    check_qkv("axial_attention", q, k, v)
    out_dtype = _compute_dtype(v)
    if attended_axis(axis) == -1:
        energy = torch.einsum("bchi,bchj->bhij", q, k).float() * scale  # (B, H, W, W)
        if bias is not None:
            energy = energy + bias
        attn = torch.softmax(energy, dim=-1).to(out_dtype)
        return torch.einsum("bhij,bchj->bchi", attn, v)  # (B, C, H, W)
    energy = torch.einsum("bciw,bcjw->bwij", q, k).float() * scale  # (B, W, H, H)
    if bias is not None:
        energy = energy + bias
    attn = torch.softmax(energy, dim=-1).to(out_dtype)
    return torch.einsum("bwij,bcjw->bciw", attn, v)  # (B, C, H, W)
