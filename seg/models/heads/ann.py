"""ANN head: asymmetric non-local blocks whose keys/values are pyramid-pooled (AFNB fusion + APNB context).

"Asymmetric Non-local Neural Networks for Semantic Segmentation", Zhu et al., ICCV 2019,
https://arxiv.org/abs/1908.07678. Layout mirrors mmsegmentation 1.x ``ANNHead``
(``configs/_base_/models/ann_r50-d8.py``: stages 3 + 4, project channels 256, key pool scales 1, 3, 6, 8,
query scale 1): ``fusion`` (AFNB: stage-4 queries attend to pooled stage-3 keys/values,
``bottleneck(cat[context, stage4])``, no activation) -> dropout -> 3x3 ``bottleneck`` -> ``context``
(APNB: self-attention with one shared key/query projection over pooled keys,
``bottleneck(cat[context, x])``) -> dropout -> ``conv_seg``. Pooling the keys to
1 + 9 + 36 + 64 = 110 positions makes the attention linear in the number of pixels.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from seg.layers.pooling import AdaptiveAvgPool2d

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead
from .self_attention import SelfAttentionBlock

__all__ = ["AFNB", "ANNHead", "APNB", "PPMConcat"]


class PPMConcat(nn.ModuleList):
    """Adaptive average pooling to each scale, flattened and concatenated: (B, C, H, W) -> (B, C, sum s^2)."""

    def __init__(self, pool_scales: Sequence[int] = (1, 3, 6, 8)) -> None:
        super().__init__(AdaptiveAvgPool2d(s) for s in pool_scales)  # exports at any size (seg.layers.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([pool(x).flatten(2) for pool in self], dim=2)  # (B, C, sum s^2)


def _pooled_attention(
    key_in: int,
    query_in: int,
    channels: int,
    out_channels: int,
    share_key_query: bool,
    key_pool_scales: Sequence[int],
    norm_layer: type[nn.Module],
    act_layer: type[nn.Module],
) -> SelfAttentionBlock:
    return SelfAttentionBlock(
        key_in,
        query_in,
        channels,
        out_channels,
        share_key_query=share_key_query,
        key_query_num_convs=1,
        key_query_norm=True,
        value_out_num_convs=1,
        value_out_norm=False,
        with_out=True,
        key_downsample=PPMConcat(key_pool_scales),
        norm_layer=norm_layer,
        act_layer=act_layer,
    )


class AFNB(nn.Module):
    """Asymmetric fusion non-local block: high-level queries, low-level pooled keys/values (two inputs).

    Args:
        low_in_channels: channels of the low-level (key) map, stage 3.
        high_in_channels: channels of the high-level (query) map, stage 4 (= output channels).
        channels: key/query width.
        key_pool_scales: pyramid pooling of keys/values.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        low_in_channels: int,
        high_in_channels: int,
        channels: int,
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                _pooled_attention(
                    low_in_channels,
                    high_in_channels,
                    channels,
                    high_in_channels,
                    False,
                    key_pool_scales,
                    norm_layer,
                    act_layer,
                )
            ]
        )
        self.bottleneck = ConvBnAct(2 * high_in_channels, high_in_channels, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = sum(stage(high, low) for stage in self.stages)  # (B, C_high, h, w)
        return self.bottleneck(torch.cat([context, high], dim=1))


class APNB(nn.Module):
    """Asymmetric pyramid non-local block: self-attention with shared key/query projection, pooled keys.

    Args:
        channels: input (= output) channels.
        project_channels: key/query width.
        key_pool_scales: pyramid pooling of keys/values.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        channels: int,
        project_channels: int,
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                _pooled_attention(
                    channels, channels, project_channels, channels, True, key_pool_scales, norm_layer, act_layer
                )
            ]
        )
        self.bottleneck = ConvBnAct(2 * channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = sum(stage(x, x) for stage in self.stages)  # (B, C, h, w)
        return self.bottleneck(torch.cat([context, x], dim=1))


class ANNHead(DecodeHead):
    """ANN decode head on ``[stage3, stage4]``; returns ``{'out': logits at feature resolution}``.

    (mmseg's ``query_scales`` is fixed to ``(1,)``: every published config uses it, and other values
    do not run in mmseg 1.x.)

    Args:
        in_channels: ``(stage3 channels, stage4 channels)``.
        num_classes: number of output classes.
        channels: width after the fusion (mmseg: 512).
        project_channels: key/query width of both blocks (mmseg: 256).
        key_pool_scales: pyramid pooling of keys/values (mmseg: 1, 3, 6, 8).
        dropout: ``Dropout2d`` probability (after the fusion and before the classifier).
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    in_stages: ClassVar[tuple[int, ...]] = (2, 3)

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        project_channels: int = 256,
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        low_in, high_in = in_channels
        self.fusion = AFNB(low_in, high_in, project_channels, key_pool_scales, norm_layer, act_layer)
        self.bottleneck = ConvBnAct(high_in, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.context = APNB(channels, project_channels, key_pool_scales, norm_layer, act_layer)
        self.add_classifier(dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        low, high = feats
        out = self.bottleneck(self.dropout(self.fusion(low, high)))  # (B, C, h, w)
        return {"out": self.classify(self.context(out))}
