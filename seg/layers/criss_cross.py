"""Criss-cross attention (one pass).

Paper: "CCNet: Criss-Cross Attention for Semantic Segmentation", Zilong Huang, Xinggang Wang,
Lichao Huang, Chang Huang, Yunchao Wei, Wenyu Liu, ICCV 2019, https://arxiv.org/abs/1811.11721

Same parameters and computation as mmcv's ``CrissCrossAttention`` (query/key convs to C // 8, value
conv C -> C, zero-initialised ``gamma``, no scaling of the energies). CCNet's recurrence (R = 2 passes,
sharing weights) is the caller's loop, see the CCNet head in ``seg.models``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .functional import criss_cross_attention


class CrissCrossAttention(nn.Module):
    """``out = gamma * CrissCross(Q, K, V) + x``: every pixel attends to its row and column.

    Starts as the identity (``gamma`` is zero-initialised, as in the authors' code).

    Args:
        channels: input (= output and value) channels.
        reduction: query/key channels are ``max(channels // reduction, 1)``.
    """

    starts_as_identity: ClassVar[bool] = True  # residual with a zero-initialised last factor

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.channels = channels
        qk_channels = max(channels // reduction, 1)
        self.query_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query_conv(x)  # (B, C/r, H, W)
        k = self.key_conv(x)  # (B, C/r, H, W)
        v = self.value_conv(x)  # (B, C, H, W)
        return self.gamma * criss_cross_attention(q, k, v) + x
