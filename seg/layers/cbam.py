"""Convolutional Block Attention Module (channel attention, then spatial attention).

Paper: "CBAM: Convolutional Block Attention Module", Sanghyun Woo, Jongchan Park, Joon-Young Lee,
In So Kweon, ECCV 2018, https://arxiv.org/abs/1807.06521

Channel: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with one shared MLP (1x1 convs on (B, C, 1, 1),
no squeeze(), so batch 1 works). Spatial: ``sigmoid(conv7x7([mean_c(x); max_c(x)]))`` as in the paper
(the authors' code adds a BatchNorm after the 7x7 conv; we follow the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from .helpers import conv_mlp, reduced_channels


class CBAM(nn.Module):
    """``x' = x * M_c(x)``; ``out = x' * M_s(x')``.

    Args:
        channels: input (= output) channels.
        reduction: MLP reduction ratio r (paper: 16).
        spatial_kernel_size: kernel of the spatial conv (paper: 7), odd.
        act_layer: activation of the MLP.
        gate_layer: gating function (sigmoid in the paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        spatial_kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        if spatial_kernel_size % 2 != 1:
            raise ValueError(f"CBAM: spatial_kernel_size must be odd to keep the shape, got {spatial_kernel_size}")
        hidden = reduced_channels(channels, reduction)
        self.mlp = conv_mlp(channels, hidden, act_layer)
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel_size, padding=spatial_kernel_size // 2)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        x = x * self.gate(avg + mx)  # (B, C, H, W) channel attention
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * self.gate(self.spatial_conv(pooled))  # (B, C, H, W) spatial attention
