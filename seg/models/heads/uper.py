"""UPerNet head: a feature pyramid over all four stages with pyramid pooling on the last one.

"Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV 2018,
https://arxiv.org/abs/1807.10221. Layout mirrors mmsegmentation 1.x ``UPerHead``
(``configs/_base_/models/upernet_r50.py``: undilated ResNetV1c, output stride 32, PPM 1, 2, 3, 6, 512
channels): stage 4 -> ``PPM`` + ``bottleneck``; stages 1-3 -> 1x1 ``lateral_convs``; top-down sum with
bilinear upsampling; 3x3 ``fpn_convs`` on stages 1-3; everything upsampled to stage 1 and fused by
``fpn_bottleneck`` -> dropout -> ``conv_seg``. The logits are at stride 4. The stage-4 part is PSPNet's head
(``psp_modules`` + ``bottleneck``, the same names in both mmseg heads), so ``UPerHead`` extends ``PSPHead``.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from .conv_bn_act import ConvBnAct, upsample_like
from .psp import PSPHead

__all__ = ["UPerHead"]


class UPerHead(PSPHead):
    """UPerNet decode head on ``[stage1, stage2, stage3, stage4]``; returns ``{'out': logits at stride 4}``.

    Args:
        in_channels: channels of the four stages.
        num_classes: number of output classes.
        channels: width of the pyramid (mmseg: 512).
        pool_scales: PPM scales on stage 4 (mmseg: 1, 2, 3, 6).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    in_stages: ClassVar[tuple[int, ...]] = (0, 1, 2, 3)
    recipe_output_stride: ClassVar[int] = 32  # mmseg's upernet_r50 runs on the undilated ResNetV1c

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            in_channels[-1],
            num_classes,
            channels=channels,
            pool_scales=pool_scales,
            dropout=dropout,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.in_channels = tuple(in_channels)  # all four stages, not only PSP's stage 4
        self.lateral_convs = nn.ModuleList(
            ConvBnAct(c, channels, 1, norm_layer=norm_layer, act_layer=act_layer) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvBnAct(channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = ConvBnAct(
            len(self.in_channels) * channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.psp(feats[-1]))  # (B, C, h4, w4)
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the upsampled coarser level
            laterals[i - 1] = laterals[i - 1] + upsample_like(laterals[i], laterals[i - 1])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [outs[0]] + [upsample_like(o, outs[0]) for o in outs[1:]]  # all at stride 4
        fused = self.fpn_bottleneck(torch.cat(outs, dim=1))  # (B, 4C, h1, w1) -> (B, C, h1, w1)
        return {"out": self.classify(fused)}
