"""Axial attention block: attention along the height axis, then along the width axis.

Papers:
* "Axial Attention in Multidimensional Transformers", Jonathan Ho, Nal Kalchbrenner, Dirk Weissenborn,
  Tim Salimans, arXiv 2019, https://arxiv.org/abs/1912.12180
* "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Huiyu Wang, Yukun Zhu,
  Bradley Green, Hartwig Adam, Alan Yuille, Liang-Chieh Chen, ECCV 2020, https://arxiv.org/abs/2003.07853

Each axial pass has its own 1x1 query/key/value projections and multi-head scaled dot-product
attention along one axis (``seg.layers.functional.axial_attention``). With ``positional=True`` the
logits get Axial-DeepLab's learned relative positional terms for queries and keys,
``q_o . r^q_{p-o} + k_p . r^k_{p-o}`` (the value term ``r^v`` is not used); relative offsets span
``max_size`` along each axis, so any H, W up to ``max_size`` works and larger inputs raise.
The two passes are followed by a residual with a zero-initialised ``gamma`` so the block starts as
the identity (as DANet/CCNet-style context blocks do).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .functional import axial_attention


class AxialPass(nn.Module):
    """Multi-head attention along one axis (``axis=-2``: height / columns, ``-1``: width / rows)."""

    def __init__(self, channels: int, qk_channels: int, heads: int, axis: int, max_len: int | None) -> None:
        super().__init__()
        if axis not in (-1, -2):
            raise ValueError(f"AxialPass: axis must be -1 or -2, got {axis}")
        self.heads = heads
        self.axis = axis
        self.max_len = max_len
        self.query_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.head_dim = qk_channels // heads
        if max_len is not None:
            # relative offset (key - query) + max_len - 1 indexes the last dim, shared by all heads
            self.rel_q = nn.Parameter(torch.randn(self.head_dim, 2 * max_len - 1) * self.head_dim**-0.5)
            self.rel_k = nn.Parameter(torch.randn(self.head_dim, 2 * max_len - 1) * self.head_dim**-0.5)
        else:
            self.register_parameter("rel_q", None)
            self.register_parameter("rel_k", None)

    def _relative_bias(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # q, k: (B*heads, d, H, W); returns logits (B*heads, other, L, L) [., ., query, key]
        length = q.shape[self.axis]
        if length > self.max_len:
            dim = "height" if self.axis == -2 else "width"
            raise ValueError(
                f"AxialAttention(positional=True): input {dim} {length} exceeds max_size {self.max_len} "
                f"along that axis (feature map {q.shape[-2]}x{q.shape[-1]}); build the block with a larger max_size"
            )
        pos = torch.arange(length, device=q.device)
        index = pos[None, :] - pos[:, None] + self.max_len - 1  # (L, L) [query, key]
        r_q = self.rel_q[:, index].to(q.dtype)  # (d, L, L)
        r_k = self.rel_k[:, index].to(k.dtype)  # (d, L, L)
        if self.axis == -1:  # rows: q[b, c, o, i]
            bias = torch.einsum("bcoi,cij->boij", q, r_q) + torch.einsum("bcoj,cij->boij", k, r_k)
        else:  # columns: q[b, c, i, o]
            bias = torch.einsum("bcio,cij->boij", q, r_q) + torch.einsum("bcjo,cij->boij", k, r_k)
        return bias.float()  # (B*heads, other, L, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).reshape(b * self.heads, self.head_dim, h, w)  # (B*heads, d, H, W)
        k = self.key_conv(x).reshape(b * self.heads, self.head_dim, h, w)  # (B*heads, d, H, W)
        v = self.value_conv(x).reshape(b * self.heads, c // self.heads, h, w)  # (B*heads, C/heads, H, W)
        scale = self.head_dim**-0.5
        bias = self._relative_bias(q, k) * scale if self.max_len is not None else None
        out = axial_attention(q, k, v, axis=self.axis, scale=scale, bias=bias)  # (B*heads, C/heads, H, W)
        return out.reshape(b, c, h, w)


class AxialAttention(nn.Module):
    """Axial attention: ``out = gamma * width_pass(height_pass(x)) + x``.

    Starts as the identity (``gamma`` is zero-initialised).

    Args:
        channels: input (= output and value) channels; divisible by ``heads``.
        reduction: query/key channels are ``max(channels // reduction, heads)``, divisible by ``heads``.
        heads: attention heads (each sees ``channels // heads`` value channels).
        positional: add learned relative positional logits (Axial-DeepLab's query and key terms).
        max_size: largest feature-map size the relative positions cover, an int or (max_h, max_w);
            required when ``positional``. Larger inputs raise a ValueError.
    """

    starts_as_identity: ClassVar[bool] = True  # residual with a zero-initialised last factor

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        heads: int = 1,
        positional: bool = False,
        max_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if heads < 1 or channels % heads != 0:
            raise ValueError(f"AxialAttention: channels ({channels}) must be divisible by heads ({heads})")
        qk_channels = max(channels // reduction, heads)
        if qk_channels % heads != 0:
            raise ValueError(
                f"AxialAttention: query/key channels channels // reduction = {qk_channels} must be divisible by "
                f"heads ({heads}); change reduction or heads"
            )
        max_h = max_w = None
        if positional:
            if max_size is None:
                raise ValueError("AxialAttention(positional=True) needs max_size (int or (max_h, max_w))")
            max_h, max_w = (max_size, max_size) if isinstance(max_size, int) else tuple(max_size)
        self.channels = channels
        self.positional = positional
        self.height = AxialPass(channels, qk_channels, heads, axis=-2, max_len=max_h)
        self.width = AxialPass(channels, qk_channels, heads, axis=-1, max_len=max_w)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.height(x)  # (B, C, H, W), attention within each column
        y = self.width(y)  # (B, C, H, W), attention within each row
        return self.gamma * y + x
