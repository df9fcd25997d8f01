"""DANet channel attention module (CAM).

Paper: "Dual Attention Network for Scene Segmentation", Jun Fu, Jing Liu, Haijie Tian, Yong Li,
Yongjun Bao, Zhiwei Fang, Hanqing Lu, CVPR 2019, https://arxiv.org/abs/1809.02983

No convolutions: the channel affinities are computed from the input itself; the only parameter is
``gamma`` (mmsegmentation's ``CAM.gamma`` Scale).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .functional import channel_attention


class ChannelAttention(nn.Module):
    """DANet CAM: ``out = gamma * softmax(rowmax(X X^T) - X X^T) X + x`` over channels.

    Starts as the identity (``gamma`` is zero-initialised, as in the authors' code).

    Args:
        channels: input (= output) channels. Kept for the common ``channels``-first contract;
            CAM has no channel-dependent parameters.
    """

    starts_as_identity: ClassVar[bool] = True  # residual with a zero-initialised last factor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * channel_attention(x) + x
