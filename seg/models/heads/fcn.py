"""FCN head: a few 3x3 convs and a 1x1 classifier; the baseline head and the auxiliary head.

"Fully Convolutional Networks for Semantic Segmentation", Long et al., CVPR 2015,
https://arxiv.org/abs/1411.4038. Layout mirrors mmsegmentation 1.x ``FCNHead`` + ``BaseDecodeHead``
(``configs/_base_/models/fcn_r50-d8.py``): ``num_convs`` ConvBnAct, optional ``conv_cat`` over
``[input, features]`` (``concat_input``), ``Dropout2d`` then the 1x1 ``conv_seg``. Module names are
mmseg's, so its checkpoints load without renaming. Our addition: ``attention`` puts any
``seg.layers`` block (``se``, ``cbam``, ``bam``, ``coord``, ``sk`` ...) after the first conv.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .conv_bn_act import ConvBnAct

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    """FCN decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head convs (mmseg: 512 for the decode head, 256 for the aux head).
        num_convs: number of ConvBnAct before the classifier (>= 1).
        kernel_size: kernel size of those convs.
        concat_input: concatenate the input with the conv features and fuse them with ``conv_cat``.
        dropout: ``Dropout2d`` probability before the classifier.
        attention: a ``seg.layers.ATTENTION`` key inserted after the first conv, or ``None``.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    in_stages: ClassVar[tuple[int, ...]] = (3,)  # backbone stages fed to it as the decode head

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dropout: float = 0.1,
        attention: str | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.convs = nn.Sequential(
            *[
                ConvBnAct(in_channels if i == 0 else channels, channels, kernel_size,
                          norm_layer=norm_layer, act_layer=act_layer)
                for i in range(num_convs)
            ]
        )
        self.attention: nn.Module | None = None
        if attention is not None:
            from seg.layers import create_attention

            self.attention = create_attention(attention, channels)
        self.conv_cat = (
            ConvBnAct(in_channels + channels, channels, kernel_size, norm_layer=norm_layer, act_layer=act_layer)
            if concat_input
            else None
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's init of the classifier
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.convs[0](x)
        if self.attention is not None:
            feats = self.attention(feats)
        feats = self.convs[1:](feats)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))  # (B, C_in + C, h, w) -> (B, C, h, w)
        return {"out": self.conv_seg(self.dropout(feats))}
