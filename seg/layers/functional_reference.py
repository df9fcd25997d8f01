"""Reference (oracle) attention cores: the plain explicit-energy formulations mmsegmentation / mmcv compute.

Each builds the whole energy tensor, takes the softmax and the weighted sum, exactly as written in the
papers and in mmseg/mmcv. They are the semantics ``seg.layers.functional``'s fast cores must reproduce
(tests compare the two), what ``seg.bench`` times them against, what ``explicit_attention()`` switches a
whole model to ("as mmseg runs it"), and what ``export_mode()`` traces (plain matmul + softmax lowers in
every exporter with symbolic H and W). Kept apart from the fast cores so that the oracles stay short and
obviously right, and a change to a fast path cannot silently change its own yardstick.

The input checks (``check_qkv``, ``attended_axis``) live here too: they are part of the cores' contract,
which the fast cores import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "position_attention_reference",
    "channel_attention_reference",
    "criss_cross_attention_reference",
    "axial_attention_reference",
    "check_qkv",
    "attended_axis",
]


def check_qkv(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError naming ``name`` unless q, k, v are (B, C, H, W) with q == k in shape and v matching
    in batch and spatial size: a wrong layout would otherwise surface as an opaque matmul shape error."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{name}: q, k, v must be (B, C, H, W), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise ValueError(f"{name}: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"{name}: v must match q in batch and spatial size, got q {tuple(q.shape)} and v {tuple(v.shape)}"
        )


def attended_axis(axis: int) -> int:
    """The attended axis of ``axial_attention`` as -1 (W) or -2 (H); 3 and 2 are accepted as aliases."""
    if axis in (-1, 3):
        return -1
    if axis in (-2, 2):
        return -2
    raise ValueError(
        f"axial_attention: axis must be -1 (along W, within rows) or -2 (along H, within columns), got {axis}"
    )


def position_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Explicit ``position_attention`` as mmseg's PAM / mmcv's NonLocal2d compute it (HW x HW energy)."""
    check_qkv("position_attention_reference", q, k, v)
    b, _, h, w = q.shape
    query = q.flatten(2).transpose(1, 2)  # (B, N, Cq)
    energy = torch.bmm(query, k.flatten(2)) * scale  # (B, N, N)
    attn = torch.softmax(energy.float(), dim=-1).to(v.dtype)  # (B, N, N)
    out = torch.bmm(v.flatten(2), attn.transpose(1, 2))  # (B, Cv, N)
    return out.reshape(b, v.shape[1], h, w)


def channel_attention_reference(x: torch.Tensor) -> torch.Tensor:
    """Explicit DANet CAM as mmseg writes it: ``softmax(max(energy) - energy)``."""
    b, c, h, w = x.shape
    query = x.flatten(2)  # (B, C, N)
    energy = torch.bmm(query, query.transpose(1, 2))  # (B, C, C)
    energy_new = energy.max(dim=-1, keepdim=True)[0].expand_as(energy) - energy  # (B, C, C)
    attn = torch.softmax(energy_new.float(), dim=-1).to(x.dtype)
    out = torch.bmm(attn, query)  # (B, C, N)
    return out.reshape(b, c, h, w)


def criss_cross_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention as mmcv's pure-PyTorch ``CrissCrossAttention`` writes it (energies with a
    -inf diagonal added, transposed, concatenated, softmax)."""
    check_qkv("criss_cross_attention_reference", q, k, v)
    h = q.shape[2]
    neg_inf_diag = torch.diag(torch.full((h,), float("-inf"), device=q.device))  # (H, H), 0 off-diagonal
    energy_h = torch.einsum("bchw,bciw->bwhi", q, k).float() + neg_inf_diag  # (B, W, H, H)
    energy_h = energy_h.transpose(1, 2)  # (B, H, W, H)
    energy_w = torch.einsum("bchw,bchj->bhwj", q, k).float()  # (B, H, W, W)
    attn = F.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1).to(v.dtype)  # (B, H, W, H+W)
    out = torch.einsum("bciw,bhwi->bchw", v, attn[..., :h])
    out = out + torch.einsum("bchj,bhwj->bchw", v, attn[..., h:])
    return out


def axial_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    scale: float = 1.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Explicit axial attention as usually written: fold the other axis into the batch, bmm, softmax."""
    check_qkv("axial_attention_reference", q, k, v)
    b, cq, h, w = q.shape
    cv = v.shape[1]
    if attended_axis(axis) == -2:  # transpose so that the attended axis is the last one
        q, k, v = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)
    _, _, other, length = q.shape
    query = q.permute(0, 2, 3, 1).reshape(b * other, length, cq)  # (B*other, L, Cq)
    key = k.permute(0, 2, 1, 3).reshape(b * other, cq, length)  # (B*other, Cq, L)
    value = v.permute(0, 2, 3, 1).reshape(b * other, length, cv)  # (B*other, L, Cv)
    energy = torch.bmm(query, key).float() * scale  # (B*other, L, L)
    if bias is not None:
        energy = energy + bias.expand(b, other, length, length).reshape(b * other, length, length)
    attn = torch.softmax(energy, dim=-1).to(value.dtype)
    out = torch.bmm(attn, value)  # (B*other, L, Cv)
    out = out.reshape(b, other, length, cv).permute(0, 3, 1, 2)  # (B, Cv, other, L)
    if attended_axis(axis) == -2:
        out = out.transpose(2, 3)  # (B, Cv, H, W)
    return out.contiguous()
