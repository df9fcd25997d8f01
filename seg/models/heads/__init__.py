"""Decode heads, one file each. Heads return a dict of logits at feature resolution, never losses.

``HEADS`` maps the names used in configs to the head classes; every head takes
``(in_channels, num_classes, ...)`` and returns ``{'out': logits}`` plus, in train mode,
any extra deep-supervision outputs (DANet: ``'pam'``, ``'cam'``).
"""

from __future__ import annotations

from torch import nn

from .axial import AxialHead
from .ccnet import CCHead
from .conv_bn_act import ConvBnAct
from .danet import DAHead
from .fcn import FCNHead
from .nonlocal_head import NLHead

__all__ = ["HEADS", "AxialHead", "CCHead", "ConvBnAct", "DAHead", "FCNHead", "NLHead", "create_head"]

HEADS: dict[str, type[nn.Module]] = {
    "fcn": FCNHead,
    "ccnet": CCHead,
    "danet": DAHead,
    "nonlocal": NLHead,
    "axial": AxialHead,
}


def create_head(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """``HEADS[name](in_channels, num_classes, **kwargs)``; unknown names list the valid ones."""
    if name not in HEADS:
        raise ValueError(f"Unknown head {name!r}. Valid heads: {', '.join(sorted(HEADS))}")
    return HEADS[name](in_channels, num_classes, **kwargs)
