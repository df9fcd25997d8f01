"""ISANet head: interlaced sparse self-attention, a long-range pass then a short-range pass.

"Interlaced Sparse Self-Attention for Semantic Segmentation", Huang et al., 2019,
https://arxiv.org/abs/1907.12273. Layout mirrors mmsegmentation 1.x ``ISAHead``
(``configs/_base_/models/isanet_r50-d8.py``: isa_channels 256, down factor 8x8): the map (padded
symmetrically to a multiple of the down factor) is split into ``loc_h x loc_w`` interlaced groups of
positions ``down_factor`` apart; ``global_relation`` attends within each such group (long range),
then ``local_relation`` within each ``loc_h x loc_w`` block (short range); ``out_conv(cat[x, in_conv(x)])``.
Both relations are ``SelfAttentionBlock`` s (2-conv key/query stacks, plain value conv) plus a 1x1
``output_project``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead
from .self_attention import SelfAttentionBlock

__all__ = ["ISAHead"]


class _Relation(SelfAttentionBlock):
    """Self-attention over one set of positions followed by a 1x1 ``output_project`` (mmseg's ISA block)."""

    def __init__(
        self, channels: int, isa_channels: int, norm_layer: type[nn.Module], act_layer: type[nn.Module]
    ) -> None:
        super().__init__(
            channels,
            channels,
            isa_channels,
            channels,
            key_query_num_convs=2,
            key_query_norm=True,
            value_out_num_convs=1,
            value_out_norm=False,
            with_out=False,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.output_project = ConvBnAct(channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.output_project(super().forward(x, x))


class ISAHead(DecodeHead):
    """ISANet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map (stage 4).
        num_classes: number of output classes.
        channels: width of the head (mmseg: 512).
        isa_channels: query/key width of both relations (mmseg: 256).
        down_factor: ``(loc_h, loc_w)``, the block size of the short-range pass (mmseg: (8, 8)).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    # torch.export cannot keep H and W symbolic through the pad-to-a-multiple-of-down_factor and crop-back
    # (it freezes whether the traced size needed padding): `python -m seg.export` exports ISA at a fixed --size.
    export_dynamic: ClassVar[bool] = False

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        isa_channels: int = 256,
        down_factor: tuple[int, int] = (8, 8),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.down_factor = (int(down_factor[0]), int(down_factor[1]))
        self.in_conv = ConvBnAct(in_channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.global_relation = _Relation(channels, isa_channels, norm_layer, act_layer)
        self.local_relation = _Relation(channels, isa_channels, norm_layer, act_layer)
        self.out_conv = ConvBnAct(channels * 2, channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.add_classifier(dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        residual = feats = self.in_conv(x)  # (B, C, h, w)
        b, c, h, w = feats.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = math.ceil(h / loc_h), math.ceil(w / loc_w)
        pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
        if pad_h or pad_w:  # centre the map in a multiple of the down factor
            feats = F.pad(feats, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        # row = gy * loc_h + ly: the long-range groups share (ly, lx), positions loc apart
        feats = feats.reshape(b, c, glb_h, loc_h, glb_w, loc_w)
        feats = feats.permute(0, 3, 5, 1, 2, 4).reshape(-1, c, glb_h, glb_w)  # (B*loc_h*loc_w, C, glb_h, glb_w)
        feats = self.global_relation(feats)
        feats = feats.reshape(b, loc_h, loc_w, c, glb_h, glb_w)
        feats = feats.permute(0, 4, 5, 3, 1, 2).reshape(-1, c, loc_h, loc_w)  # (B*glb_h*glb_w, C, loc_h, loc_w)
        feats = self.local_relation(feats)
        feats = feats.reshape(b, glb_h, glb_w, c, loc_h, loc_w)
        feats = feats.permute(0, 3, 1, 4, 2, 5).reshape(b, c, glb_h * loc_h, glb_w * loc_w)  # (B, C, H', W')
        feats = feats[:, :, pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w]  # remove the padding
        out = self.out_conv(torch.cat([feats, residual], dim=1))  # (B, 2C, h, w) -> (B, C, h, w)
        return {"out": self.classify(out)}
