"""Bottleneck Attention Module.

Paper: "BAM: Bottleneck Attention Module", Jongchan Park, Sanghyun Woo, Joon-Young Lee, In So Kweon,
BMVC 2018, https://arxiv.org/abs/1807.06514

``F' = F + F * sigmoid(M_c(F) + M_s(F))`` (paper eq. 1-2: the two branches are summed, not multiplied
as in the widely copied code). Channel branch: global average pool -> MLP (C -> C/r -> C). The paper
puts a BatchNorm in that MLP; on pooled vectors it fails for batch 1 in training (one value per
channel), so it is left out here. Spatial branch: 1x1 reduce, two dilated 3x3 convs (d=4), 1x1 to one
map, each but the last followed by norm + activation.
"""

from __future__ import annotations

import torch
from torch import nn

from .helpers import conv_mlp, reduced_channels


class BAM(nn.Module):
    """Bottleneck Attention Module: ``x + x * sigmoid(channel(x) + spatial(x))``.

    Args:
        channels: input (= output) channels.
        reduction: reduction ratio r of both branches (paper: 16).
        dilation: dilation of the spatial branch's 3x3 convs (paper: 4).
        act_layer: activation class.
        norm_layer: norm of the spatial branch.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        dilation: int = 4,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.channel_mlp = conv_mlp(channels, hidden, act_layer)
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            norm_layer(hidden),
            act_layer(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation, bias=False),
            norm_layer(hidden),
            act_layer(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation, bias=False),
            norm_layer(hidden),
            act_layer(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m_c = self.channel_mlp(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        m_s = self.spatial(x)  # (B, 1, H, W)
        attn = torch.sigmoid(m_c + m_s)  # (B, C, H, W)
        return x + x * attn
