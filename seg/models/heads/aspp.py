"""DeepLabV3 head: atrous spatial pyramid pooling (ASPP) with an image-level pooling branch.

"Rethinking Atrous Convolution for Semantic Image Segmentation", Chen et al., 2017,
https://arxiv.org/abs/1706.05587. Layout mirrors mmsegmentation 1.x ``ASPPHead`` / ``ASPPModule``
(``configs/_base_/models/deeplabv3_r50-d8.py``, dilations 1, 12, 24, 36): a global-average-pool branch
(``image_pool``, 1x1 conv, upsampled) plus one branch per dilation (1x1 conv for dilation 1, 3x3 atrous
conv otherwise), concatenated -> 3x3 ``bottleneck`` -> dropout -> ``conv_seg``. DeepLabV3+
(``sep_aspp.py``) reuses the ASPP part with depthwise-separable branches.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from .conv_bn_act import ConvBnAct, DepthwiseSeparableConvBnAct, upsample_like
from .decode_head import DecodeHead

__all__ = ["ASPPHead", "ASPPModule"]


class ASPPModule(nn.ModuleList):
    """One branch per dilation: a 1x1 conv for dilation 1, else a 3x3 atrous conv (optionally separable).

    Args:
        in_channels: input channels.
        channels: output channels of every branch.
        dilations: one branch per entry.
        separable: depthwise-separable 3x3 branches (DeepLabV3+).
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        dilations: Sequence[int],
        separable: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        branches: list[nn.Module] = []
        for d in dilations:
            if d == 1:
                branches.append(ConvBnAct(in_channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer))
            elif separable:
                branches.append(
                    DepthwiseSeparableConvBnAct(
                        in_channels, channels, 3, dilation=d, norm_layer=norm_layer, act_layer=act_layer
                    )
                )
            else:
                branches.append(
                    ConvBnAct(in_channels, channels, 3, dilation=d, norm_layer=norm_layer, act_layer=act_layer)
                )
        super().__init__(branches)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [branch(x) for branch in self]


class ASPPHead(DecodeHead):
    """DeepLabV3 decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map (stage 4).
        num_classes: number of output classes.
        channels: width of every branch and of the bottleneck (mmseg: 512).
        dilations: ASPP dilations (mmseg's DeepLabV3 recipe: 1, 12, 24, 36 at output stride 8).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    separable: ClassVar[bool] = False

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        dilations: Sequence[int] = (1, 12, 24, 36),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.dilations = tuple(dilations)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBnAct(in_channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        )
        self.aspp_modules = ASPPModule(
            in_channels, channels, dilations, separable=self.separable, norm_layer=norm_layer, act_layer=act_layer
        )
        self.bottleneck = ConvBnAct(
            (len(dilations) + 1) * channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer
        )
        self.add_classifier(dropout)

    def aspp(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> fused ASPP features (B, channels, h, w)."""
        outs = [upsample_like(self.image_pool(x), x), *self.aspp_modules(x)]
        return self.bottleneck(torch.cat(outs, dim=1))  # (B, (D + 1) * C, h, w) -> (B, C, h, w)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classify(self.aspp(x))}
