"""Attentional Feature Fusion: MS-CAM, AFF and iAFF (fusion blocks: two inputs).

Paper: "Attentional Feature Fusion", Yimian Dai, Fabian Gieseke, Stefan Oehmcke, Yiquan Wu,
Kobus Barnard, WACV 2021, https://arxiv.org/abs/2009.14082

MS-CAM (multi-scale channel attention): ``sigmoid(L(X) + G(X))``, L a point-wise bottleneck
(1x1 conv, norm, act, 1x1 conv, norm) on the full map, G the same bottleneck on the global average.
The authors' code puts BatchNorm in G too; on pooled (B, C, 1, 1) tensors that fails for batch 1 in
training, so G has no norm here. ``forward(x, residual)`` fuses the two inputs (same shape), as in
the authors' code: AFF returns ``2 x M + 2 y (1 - M)``, iAFF applies a second MS-CAM to the first
fusion (with its own global branch: the authors' code reuses the first one by mistake).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .helpers import conv_mlp, reduced_channels


class MultiScaleChannelAttention(nn.Module):
    """MS-CAM weights ``sigmoid(local(x) + global(x))`` (B, C, H, W) in (0, 1); single input.

    Args:
        channels: input channels.
        reduction: bottleneck ratio r (paper: 4).
        act_layer: activation class.
        norm_layer: norm of the local branch.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 4,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            norm_layer(hidden),
            act_layer(),
            nn.Conv2d(hidden, channels, kernel_size=1),
            norm_layer(channels),
        )
        self.global_att = conv_mlp(channels, hidden, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_att(x)  # (B, C, H, W)
        glob = self.global_att(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        return torch.sigmoid(local + glob)


class AFF(nn.Module):
    """Attentional feature fusion of two same-shape inputs: ``2 x M + 2 residual (1 - M)``,
    ``M = MS-CAM(x + residual)``. Fusion block: ``forward(x, residual)``.

    Args:
        channels: channels of both inputs (= output).
        reduction: MS-CAM bottleneck ratio (paper: 4).
        act_layer: activation class.
        norm_layer: norm class.
    """

    iterative: ClassVar[bool] = False  # iAFF: a second MS-CAM (``attn2``) on the first fusion

    def __init__(
        self,
        channels: int,
        reduction: float = 4,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.attn = MultiScaleChannelAttention(channels, reduction, act_layer, norm_layer)
        self.attn2 = MultiScaleChannelAttention(channels, reduction, act_layer, norm_layer) if self.iterative else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if x.shape != residual.shape:
            raise ValueError(
                f"{type(self).__name__}: x and residual must have the same shape, got {tuple(x.shape)} "
                f"and {tuple(residual.shape)}"
            )
        weight = self.attn(x + residual)  # (B, C, H, W)
        if self.attn2 is None:
            return 2 * x * weight + 2 * residual * (1 - weight)
        fused = x * weight + residual * (1 - weight)  # iAFF: the initial integration decides the second weight
        weight = self.attn2(fused)  # (B, C, H, W)
        return x * weight + residual * (1 - weight)


class IAFF(AFF):
    """Iterative attentional feature fusion: a first MS-CAM fusion decides the input of the second
    (``x M' + residual (1 - M')``, no factor 2). Fusion block: ``forward(x, residual)``; arguments as :class:`AFF`.
    """

    iterative: ClassVar[bool] = True
