"""DeepLabV3+ head: ASPP with depthwise-separable branches plus a decoder on the stride-4 stage.

"Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation", Chen et al.,
ECCV 2018, https://arxiv.org/abs/1802.02611. Layout mirrors mmsegmentation 1.x
``DepthwiseSeparableASPPHead`` (``configs/_base_/models/deeplabv3plus_r50-d8.py``: dilations 1, 12, 24, 36,
``c1_in_channels`` 256 -> ``c1_channels`` 48): the ASPP of ``aspp.py`` on stage 4 (separable 3x3 branches),
upsampled to stage 1 and concatenated with ``c1_bottleneck(stage1)`` -> two separable 3x3 convs
(``sep_bottleneck``) -> dropout -> ``conv_seg``. The logits are at stride 4.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from .aspp import ASPPHead
from .conv_bn_act import ConvBnAct, DepthwiseSeparableConvBnAct, upsample_like

__all__ = ["DepthwiseSeparableASPPHead"]


class DepthwiseSeparableASPPHead(ASPPHead):
    """DeepLabV3+ decode head on ``[stage1, stage4]``; returns ``{'out': logits at stride 4}``.

    Args:
        in_channels: ``(stage1 channels, stage4 channels)``.
        num_classes: number of output classes.
        channels: width of the ASPP branches and the decoder (mmseg: 512).
        dilations: ASPP dilations (mmseg: 1, 12, 24, 36 at output stride 8).
        c1_channels: width of the 1x1 projection of stage 1 (mmseg: 48).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    in_stages: ClassVar[tuple[int, ...]] = (0, 3)
    separable: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dilations: Sequence[int] = (1, 12, 24, 36),
        c1_channels: int = 48,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        c1_in, c4_in = in_channels
        super().__init__(
            c4_in,
            num_classes,
            channels=channels,
            dilations=dilations,
            dropout=dropout,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.in_channels = tuple(in_channels)  # the stages it reads, not only ASPP's stage 4
        self.c1_bottleneck = ConvBnAct(c1_in, c1_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvBnAct(
                channels + c1_channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer
            ),
            DepthwiseSeparableConvBnAct(channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        c1, c4 = feats
        low = self.c1_bottleneck(c1)  # (B, C1, H/4, W/4)
        high = upsample_like(self.aspp(c4), low)  # (B, C, H/4, W/4)
        out = self.sep_bottleneck(torch.cat([high, low], dim=1))  # (B, C + C1, H/4, W/4) -> (B, C, H/4, W/4)
        return {"out": self.classify(out)}
