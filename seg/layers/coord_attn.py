"""Coordinate Attention.

Paper: "Coordinate Attention for Efficient Mobile Network Design", Qibin Hou, Daquan Zhou, Jiashi Feng,
CVPR 2021, https://arxiv.org/abs/2103.02907

Pool along W and along H, concatenate the two direction-aware descriptors along the spatial axis, one
shared 1x1 conv + norm + h-swish, split, one 1x1 conv + sigmoid per direction, multiply. The norm sees
H + W >= 2 values per channel, so batch 1 works in training even for a 1x1 input.
"""

from __future__ import annotations

import torch
from torch import nn

from .helpers import reduced_channels


class CoordAttention(nn.Module):
    """``out = x * sigmoid(conv_h(y_h)) * sigmoid(conv_w(y_w))``.

    Args:
        channels: input (= output) channels.
        reduction: reduction ratio r of the shared conv (paper: 32), hidden width at least min(channels, 8).
        act_layer: activation of the shared conv (paper: h-swish = ``nn.Hardswish``).
        norm_layer: norm of the shared conv.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 32,
        act_layer: type[nn.Module] = nn.Hardswish,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.norm = norm_layer(hidden)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(hidden, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1) pooled along W
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1) pooled along H
        y = self.act(self.norm(self.conv1(torch.cat([x_h, x_w], dim=2))))  # (B, hidden, H+W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)  # (B, hidden, H, 1), (B, hidden, W, 1)
        a_h = torch.sigmoid(self.conv_h(y_h))  # (B, C, H, 1)
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # (B, C, 1, W)
        return x * a_h * a_w
