"""Squeeze-and-Excitation.

Paper: "Squeeze-and-Excitation Networks", Jie Hu, Li Shen, Gang Sun, CVPR 2018,
https://arxiv.org/abs/1709.01507

The two FC layers are 1x1 convolutions on the pooled (B, C, 1, 1) tensor (no squeeze(), so batch 1
and any spatial size work), as in timm's ``SEModule``.
"""

from __future__ import annotations

import torch
from torch import nn

from .helpers import reduced_channels


class SqueezeExcite(nn.Module):
    """``out = x * gate(fc2(act(fc1(avgpool(x)))))``.

    Args:
        channels: input (= output) channels.
        reduction: bottleneck ratio r (hidden = channels / r, at least min(channels, 8)).
        act_layer: activation after the first FC.
        gate_layer: gating function (sigmoid in the paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) squeeze
        s = self.gate(self.fc2(self.act(self.fc1(s))))  # (B, C, 1, 1) excitation
        return x * s
