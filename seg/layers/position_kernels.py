"""The implementations behind ``seg.layers.functional.position_attention``: self-attention over all H*W positions
without materialising the (H*W) x (H*W) energies.

``position_attention`` (in ``seg.layers.functional``) checks the mode switches and picks one of these; they live here
so that the public module reads as the list of cores, and the memory machinery (chunk sizes, the inference buffers,
the exp floor, the SDPA head split) is in one place.

* CUDA: ``position_attention_sdpa`` - ``F.scaled_dot_product_attention`` with the scale passed
  explicitly. In fp16/bf16, v is split into heads of the q/k width (q and k are shared by every head
  via ``expand``, no copy), so the flash / cuDNN kernels apply (they need equal q/k/v head dims
  <= 256); in fp32 one head, which the memory-efficient kernel runs (flash has no fp32).
* elsewhere (CPU, or ``chunk_size`` given): ``position_attention_chunked`` - queries are processed in
  chunks sized automatically so that one chunk's energies take about ``CHUNK_BYTES`` (``INFERENCE_CHUNK_BYTES``
  without gradients); peak extra memory
  is O(chunk * HW). When gradients are needed and there is more than one chunk, each chunk is
  recomputed in backward (activation checkpointing), so training does not store HW x HW either.

Neither exports (a Python chunk loop freezes the traced size; SDPA is a kernel choice): ``seg.export`` traces the
reference under ``export_mode()`` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .functional_reference import check_qkv
from .precision import _compute_dtype

__all__ = [
    "CHUNK_BYTES",
    "INFERENCE_CHUNK_BYTES",
    "auto_chunk_size",
    "position_attention_chunked",
    "position_attention_sdpa",
]

#: Target size in bytes of one chunk's fp32 energies in ``position_attention_chunked`` when gradients are needed
#: (each chunk is recomputed in backward).
CHUNK_BYTES = 16 * 2**20
#: The same without gradients (inference: one reused energy buffer). Larger chunks mean fewer, larger matmuls and
#: fewer thread synchronisations: on a 2-core AMD EPYC (DANet PAM, 64x128 features, q/k 64, v 512) 512-query
#: chunks (16 MiB) took 1.7x the time of 2048-query chunks (64 MiB), the whole 8192 queries at once 1.04x; see
#: docs/benchmarks.md. 64 MiB is small next to the (HW)^2 energies it replaces (4 GiB at 1024x2048).
INFERENCE_CHUNK_BYTES = 64 * 2**20


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
