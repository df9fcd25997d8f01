"""DANet position attention module (PAM).

Paper: "Dual Attention Network for Scene Segmentation", Jun Fu, Jing Liu, Haijie Tian, Yong Li,
Yongjun Bao, Zhiwei Fang, Hanqing Lu, CVPR 2019, https://arxiv.org/abs/1809.02983

Parameter names follow the authors' code and map 1:1 onto mmsegmentation's ``PAM``
(``key_project`` / ``query_project`` / ``value_project`` convs and the ``gamma`` Scale), see
``seg.models`` for the checkpoint conversion. The attention itself is
``seg.layers.functional.position_attention`` (memory-safe: never builds the HW x HW matrix for large
inputs).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .functional import position_attention


class PositionAttention(nn.Module):
    """DANet PAM: ``out = gamma * softmax(Q K^T) V + x`` over all H*W positions.

    Starts as the identity (``gamma`` is zero-initialised, as in the authors' code).

    Args:
        channels: input (= output and value) channels.
        qk_channels: query/key channels (DANet: 64 for 512 input channels; mmseg ``pam_channels``).
    """

    starts_as_identity: ClassVar[bool] = True  # residual with a zero-initialised last factor

    def __init__(self, channels: int, qk_channels: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.qk_channels = qk_channels
        self.query_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, qk_channels, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query_conv(x)  # (B, Cq, H, W)
        k = self.key_conv(x)  # (B, Cq, H, W)
        v = self.value_conv(x)  # (B, C, H, W)
        out = position_attention(q, k, v, scale=1.0)  # (B, C, H, W)
        return self.gamma * out + x
