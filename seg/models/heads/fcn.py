"""FCN head: a few 3x3 convs and a 1x1 classifier; the baseline, the auxiliary head, and the frame of the
context heads.

"Fully Convolutional Networks for Semantic Segmentation", Long et al., CVPR 2015,
https://arxiv.org/abs/1411.4038. Layout mirrors mmsegmentation 1.x ``FCNHead`` + ``BaseDecodeHead``
(``configs/_base_/models/fcn_r50-d8.py``): ``num_convs`` ConvBnAct, optional ``conv_cat`` over
``[input, features]`` (``concat_input``), ``Dropout2d`` then the 1x1 ``conv_seg``. Module names are
mmseg's, so its checkpoints load without renaming.

The frame: ``convs[0] -> context block (x recurrence, shared weights) -> convs[1:] -> conv_cat -> classify``.
mmseg's CCNet, Non-local, GCNet and DNLNet heads are this FCN with one context block between the two convs
(``CCHead``, ``NLHead``, ``GCHead``, ``DNLHead``, and our ``AxialHead``): each subclass only declares its typed
arguments and plugs its block in with :meth:`FCNHead.plug_context` under mmseg's module name (``cca``,
``nl_block``, ``gc_block``, ``dnl_block``). Our addition to the plain FCN: ``attention`` plugs any
``seg.layers`` block (``se``, ``cbam``, ``bam``, ``coord``, ``sk`` ...) in the same place.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead

__all__ = ["FCNHead"]


class FCNHead(DecodeHead):
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
        super().__init__(in_channels, channels, num_classes)
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.convs = nn.Sequential(
            *[
                ConvBnAct(
                    in_channels if i == 0 else channels,
                    channels,
                    kernel_size,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                )
                for i in range(num_convs)
            ]
        )
        self.context_name: str | None = None  # attribute holding the context block, see plug_context
        self.recurrence = 1
        self.attention: nn.Module | None = None
        if attention is not None:
            from seg.layers import create_attention

            self.plug_context("attention", create_attention(attention, channels))
        self.conv_cat = (
            ConvBnAct(in_channels + channels, channels, kernel_size, norm_layer=norm_layer, act_layer=act_layer)
            if concat_input
            else None
        )
        self.add_classifier(dropout)

    def plug_context(self, name: str, block: nn.Module, recurrence: int = 1) -> None:
        """Make ``block`` (channels in = out) the context block, applied ``recurrence`` times with the same
        weights after ``convs[0]``. It is registered as the attribute ``name`` (mmseg's module name, so
        checkpoints load by key); ``recurrence`` stays an attribute a caller may change after building.
        """
        if recurrence < 1:
            raise ValueError(f"{type(self).__name__}: recurrence must be >= 1, got {recurrence}")
        setattr(self, name, block)
        self.context_name = name
        self.recurrence = recurrence

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.convs[0](x)
        if self.context_name is not None:
            block = getattr(self, self.context_name)
            for _ in range(self.recurrence):  # the same weights every pass (CCNet: 2 reach every pixel)
                feats = block(feats)
        feats = self.convs[1:](feats)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))  # (B, C_in + C, h, w) -> (B, C, h, w)
        return {"out": self.classify(feats)}
