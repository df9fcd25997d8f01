"""OCRNet head: object-contextual representations, the second stage of a two-stage cascade.

"Object-Contextual Representations for Semantic Segmentation", Yuan et al., ECCV 2020,
https://arxiv.org/abs/1909.11065. Layout mirrors mmsegmentation 1.x ``OCRHead`` in a
``CascadeEncoderDecoder`` (``configs/_base_/models/ocrnet_r50-d8.py``, the R101-D8 recipes): stage 1 is an
FCN head on backbone stage 3 (256 channels, loss weight 0.4) whose *soft object regions* (its logits) feed
this head on stage 4: ``bottleneck`` (3x3, 512) -> one context vector per class, the feature average
weighted by ``softmax`` of that class's logits over positions -> ``object_context_block`` (every pixel
attends to the class vectors; ``bottleneck(cat[context, feats])``) -> dropout -> ``conv_seg``.

In seg the first stage is the model's ``aux_head`` (the same FCN); ``cascade = True`` tells
``SegmentationModel`` to run it in eval mode too and pass its logits here. (mmseg runs stage 1 a second
time for the OCR input in training, with a fresh dropout mask; we feed the same pass to both.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead
from .self_attention import SelfAttentionBlock

__all__ = ["OCRHead", "ObjectAttentionBlock", "spatial_gather"]


def spatial_gather(feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Class centres: ``feats`` averaged with ``softmax`` over positions of each class's logits.

    (B, C, h, w), (B, K, h, w) -> (B, C, K, 1).
    """
    b, c, h, w = feats.shape
    weights = torch.softmax(probs.reshape(b, probs.shape[1], h * w).float(), dim=2).to(feats.dtype)  # (B, K, N)
    context = torch.bmm(weights, feats.reshape(b, c, h * w).transpose(1, 2))  # (B, K, N) @ (B, N, C) -> (B, K, C)
    return context.transpose(1, 2).unsqueeze(3)  # (B, C, K, 1)


class ObjectAttentionBlock(SelfAttentionBlock):
    """Pixels (queries) attend to class centres (keys/values); ``bottleneck(cat[context, pixels])``.

    Args:
        channels: channels of the pixel features and the class centres (= output).
        ocr_channels: key/query/value width (mmseg: 256).
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        channels: int,
        ocr_channels: int,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            channels,
            channels,
            ocr_channels,
            channels,
            key_query_num_convs=2,
            key_query_norm=True,
            value_out_num_convs=1,
            value_out_norm=True,
            with_out=True,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.bottleneck = ConvBnAct(channels * 2, channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        context = super().forward(query_feats, key_feats)  # (B, C, h, w)
        return self.bottleneck(torch.cat([context, query_feats], dim=1))  # (B, 2C, h, w) -> (B, C, h, w)


class OCRHead(DecodeHead):
    """OCR decode head: ``forward(stage4, prev_logits)`` -> ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map (stage 4).
        num_classes: number of output classes (= channels of ``prev_logits``).
        channels: width of the pixel representation (mmseg: 512).
        ocr_channels: width of the object attention (mmseg: 256).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    cascade: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.bottleneck = ConvBnAct(in_channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels, norm_layer, act_layer)
        self.add_classifier(dropout)

    def forward(self, x: torch.Tensor, prev_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.bottleneck(x)  # (B, C, h, w)
        centres = spatial_gather(feats, prev_logits)  # (B, C, K, 1)
        out = self.object_context_block(feats, centres)  # (B, C, h, w)
        return {"out": self.classify(out)}
