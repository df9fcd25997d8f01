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

Memory of ``position_attention`` (the only core whose explicit energy is HW x HW): on CUDA
``position_attention_sdpa`` (``F.scaled_dot_product_attention``, fused kernels), elsewhere
``position_attention_chunked`` (query chunks of about ``CHUNK_BYTES`` / ``INFERENCE_CHUNK_BYTES`` of energies,
recomputed in backward); both are defined in ``seg.layers.position_kernels`` and re-exported here. The dtype
rules every core follows, and ``channel_attention``'s ``_GramFp32``, are in ``seg.layers.precision``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .functional_reference import (
    attended_axis,
    axial_attention_reference,
    channel_attention_reference,
    check_qkv,
    criss_cross_attention_reference,
    position_attention_reference,
)
from .position_kernels import (
    CHUNK_BYTES,
    INFERENCE_CHUNK_BYTES,
    auto_chunk_size,
    position_attention_chunked,
    position_attention_sdpa,
)
from .precision import _compute_dtype, _GramFp32

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
    "auto_chunk_size",
]

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


# ------------------------------------------------------------------------------------------------
# channel attention (DANet CAM)


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
