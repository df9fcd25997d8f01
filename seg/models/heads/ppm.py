"""Pyramid pooling module (PPM): the scene-context branches shared by PSPNet and UPerNet.

"Pyramid Scene Parsing Network", Zhao et al., CVPR 2017, https://arxiv.org/abs/1612.01105.
Layout mirrors mmsegmentation 1.x ``PPM`` (``decode_heads/psp_head.py``): one branch per pool scale,
adaptive average pooling to ``s x s`` -> 1x1 ConvBnAct, upsampled bilinearly (align_corners=False)
back to the input size. Child names (``<i>.1.conv`` ...) are mmseg's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seg.layers.pooling import AdaptiveAvgPool2d

from .conv_bn_act import ConvBnAct, upsample_like

__all__ = ["PPM"]


class PPM(nn.ModuleList):
    """Pool to each scale, project with a 1x1 conv, upsample back; returns one map per scale.

    Args:
        in_channels: channels of the input feature map.
        channels: output channels of every branch.
        pool_scales: output sizes of the adaptive average pooling (mmseg: 1, 2, 3, 6).
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            nn.Sequential(
                AdaptiveAvgPool2d(scale),
                ConvBnAct(in_channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer),
            )
            for scale in pool_scales
        )
        self.pool_scales = tuple(pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """(B, C_in, h, w) -> ``len(pool_scales)`` maps (B, channels, h, w)."""
        return [upsample_like(branch(x), x) for branch in self]
