"""CCNet head: criss-cross attention applied ``recurrence`` times inside the FCN frame.

"CCNet: Criss-Cross Attention for Semantic Segmentation", Huang et al., ICCV 2019,
https://arxiv.org/abs/1811.11721. Layout mirrors mmsegmentation 1.x ``CCHead``
(``configs/_base_/models/ccnet_r50-d8.py``): conv -> one shared ``CrissCrossAttention`` applied
R = 2 times (two passes reach every pixel) -> conv -> ``conv_cat([input, features])`` -> dropout ->
1x1 classifier. Module names are mmseg's (``convs``, ``cca``, ``conv_cat``, ``conv_seg``).
"""

from __future__ import annotations

from torch import nn

from seg.layers import CrissCrossAttention

from .fcn import FCNHead

__all__ = ["CCHead"]


class CCHead(FCNHead):
    """CCNet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head (mmseg: 512).
        recurrence: how many times the one shared criss-cross block is applied (mmseg: 2).
        reduction: query/key channels of the criss-cross block are ``channels // reduction``.
        concat_input: fuse ``[input, features]`` with ``conv_cat`` before the classifier.
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        recurrence: int = 2,
        reduction: int = 8,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            channels=channels,
            num_convs=2,
            concat_input=concat_input,
            dropout=dropout,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.plug_context("cca", CrissCrossAttention(channels, reduction=reduction), recurrence)
