"""Axial head (ours): the CCNet frame with axial attention in place of criss-cross attention.

Axial attention from "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
Wang et al., ECCV 2020, https://arxiv.org/abs/2003.07853 (``seg.layers.AxialAttention``: a column
pass then a row pass, optional relative positions). Frame from CCNet (``ccnet.py``): conv ->
shared attention block x ``recurrence`` -> conv -> ``conv_cat([input, features])`` -> classifier.
One axial block (height pass, then width pass) already connects every pixel to every other, which
criss-cross needs two passes for, so ``recurrence`` defaults to 1: it then costs about what CCNet's
R = 2 costs.
"""

from __future__ import annotations

from torch import nn

from seg.layers import AxialAttention

from .fcn import FCNHead

__all__ = ["AxialHead"]


class AxialHead(FCNHead):
    """Axial-attention decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head.
        recurrence: how many times the one shared axial block is applied.
        reduction: query/key channels of the axial block are ``channels // reduction``.
        heads: attention heads of the axial block.
        positional: learned relative positional logits (then ``max_size`` is required).
        max_size: largest feature-map size (int or (h, w)) the positional logits cover.
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
        recurrence: int = 1,
        reduction: int = 8,
        heads: int = 1,
        positional: bool = False,
        max_size: int | tuple[int, int] | None = None,
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
        block = AxialAttention(channels, reduction=reduction, heads=heads, positional=positional, max_size=max_size)
        self.plug_context("axial", block, recurrence)
