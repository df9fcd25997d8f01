"""Decode heads, one file each. Heads return a dict of logits at feature resolution, never losses.

``HEADS`` maps the names used in configs to the head classes. The contract with ``SegmentationModel``:

* ``in_stages`` (class attribute): the backbone stages the head reads, indices into
  ``[stage1, stage2, stage3, stage4]`` (strides 4, 8, 8|16|32, 8|16|32). One stage: the constructor takes
  ``in_channels: int`` and ``forward(x)``; several: ``in_channels`` is a tuple (one per stage, in order)
  and ``forward([x, ...])``.
* ``cascade`` (class attribute, default ``False``): the head also takes the auxiliary FCN head's logits,
  ``forward(x, prev_logits)`` (OCRNet); the model then runs the aux head in eval mode too.
* constructor ``(in_channels, num_classes, ...)``; ``forward`` returns ``{'out': logits}`` plus, in train
  mode, any extra deep-supervision outputs (DANet: ``'pam'``, ``'cam'``).

Every head derives from ``DecodeHead`` (``decode_head.py``: these attributes and the ``dropout -> conv_seg``
classifier); the context heads (CCNet, Non-local, GCNet, DNLNet, axial) are ``FCNHead`` with one context block
plugged between its convs (``fcn.py``). Each head still spells out its own typed arguments: they are its
``model.head_kwargs``. Which head names exist (these and smp's) is answered by :mod:`seg.models.registry` only.
"""

from __future__ import annotations

from torch import nn

from .ann import ANNHead
from .aspp import ASPPHead
from .axial import AxialHead
from .ccnet import CCHead
from .conv_bn_act import ConvBnAct, DepthwiseSeparableConvBnAct
from .danet import DAHead
from .decode_head import DecodeHead
from .dnl import DNLHead
from .ema import EMAHead
from .fcn import FCNHead
from .gc import GCHead
from .isa import ISAHead
from .nonlocal_head import NLHead
from .ocr import OCRHead
from .psp import PSPHead
from .sep_aspp import DepthwiseSeparableASPPHead
from .uper import UPerHead

__all__ = [
    "ANNHead",
    "ASPPHead",
    "AxialHead",
    "CCHead",
    "ConvBnAct",
    "DAHead",
    "DNLHead",
    "DecodeHead",
    "DepthwiseSeparableASPPHead",
    "DepthwiseSeparableConvBnAct",
    "EMAHead",
    "FCNHead",
    "GCHead",
    "HEADS",
    "ISAHead",
    "NLHead",
    "OCRHead",
    "PSPHead",
    "UPerHead",
]

HEADS: dict[str, type[nn.Module]] = {
    "fcn": FCNHead,
    "ccnet": CCHead,
    "danet": DAHead,
    "nonlocal": NLHead,
    "axial": AxialHead,
    "psp": PSPHead,
    "aspp": ASPPHead,
    "sep_aspp": DepthwiseSeparableASPPHead,
    "gc": GCHead,
    "ema": EMAHead,
    "isa": ISAHead,
    "dnl": DNLHead,
    "ann": ANNHead,
    "ocr": OCRHead,
    "uper": UPerHead,
}
