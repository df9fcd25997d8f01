"""The base every decode head shares: the attributes ``SegmentationModel`` reads and the classifier tail.

mmsegmentation 1.x puts both in ``BaseDecodeHead`` (``decode_heads/decode_head.py``) together with input
selection, losses and ``**kwargs`` plumbing; we keep only the two things every head really has in common:
``in_channels`` / ``channels`` / ``num_classes`` (+ the ``in_stages`` / ``cascade`` contract described in
``seg.models.heads``) and ``dropout -> conv_seg``, the 1x1 classifier under mmseg's module names, so
checkpoints load without renaming. Everything else a head builds itself, with its arguments explicit and
typed in its own ``__init__`` (the CLI types ``model.head_kwargs`` from them).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from .conv_bn_act import classifier

__all__ = ["DecodeHead"]


class DecodeHead(nn.Module):
    """Base of the decode heads: shared attributes, ``dropout`` + ``conv_seg`` and :meth:`classify`.

    A head calls ``super().__init__(in_channels, channels, num_classes)`` first, builds its own layers, then
    calls :meth:`add_classifier`: creating the classifier after the other layers keeps their seeded random
    initialisation what it was before this base existed, so seeded runs reproduce.

    Args:
        in_channels: channels of the input map, or one entry per ``in_stages`` stage for multi-stage heads.
        channels: channels of the features the classifier sees.
        num_classes: number of output classes.
    """

    in_stages: ClassVar[tuple[int, ...]] = (3,)  # backbone stages fed to the head (indices into stage1..4)
    cascade: ClassVar[bool] = False  # forward(x, prev_logits): the aux head's logits come in too (OCRNet)

    def __init__(self, in_channels: int | Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels if isinstance(in_channels, int) else tuple(in_channels)
        self.channels = channels
        self.num_classes = num_classes

    def add_classifier(self, dropout: float) -> None:
        """``dropout`` (``Dropout2d``, identity at 0) and the 1x1 ``conv_seg`` (mmseg's init)."""
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = classifier(self.channels, self.num_classes)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, channels, h, w) features -> (B, num_classes, h, w) logits."""
        return self.conv_seg(self.dropout(feats))
