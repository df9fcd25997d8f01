"""Attention blocks and functional attention cores (pure torch, no Lightning).

``ATTENTION``: key -> single-input block class (``forward(x)``, output shape == input shape).
``FUSION``: key -> two-input fusion block class (``forward(x, residual)``).
Every block takes ``channels`` as its first constructor argument; build one by key with
``create_attention(key, channels, **kwargs)``. Residual blocks that start as the identity (zero-initialised
``gamma`` or last norm) say so with the class attribute ``starts_as_identity = True``; tests/test_layers.py
checks that flag both ways for every registry entry.
"""

from __future__ import annotations

from torch import nn

from . import functional
from .aff import AFF, IAFF, MultiScaleChannelAttention
from .axial_attention import AxialAttention
from .bam import BAM
from .cbam import CBAM
from .channel_attention import ChannelAttention
from .coord_attn import CoordAttention
from .criss_cross import CrissCrossAttention
from .non_local import NonLocal2d
from .position_attention import PositionAttention
from .selective_kernel import SelectiveKernel
from .squeeze_excite import SqueezeExcite

ATTENTION: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "bam": BAM,
    "cbam": CBAM,
    "sk": SelectiveKernel,
    "coord": CoordAttention,
    "pam": PositionAttention,
    "cam": ChannelAttention,
    "nonlocal": NonLocal2d,
    "axial": AxialAttention,
    "criss_cross": CrissCrossAttention,
}

FUSION: dict[str, type[nn.Module]] = {
    "aff": AFF,
    "iaff": IAFF,
}


def create_attention(key: str | None, channels: int, **kwargs) -> nn.Module | None:
    """Build the block registered under ``key`` in ``ATTENTION`` or ``FUSION``.

    ``key=None`` (attention off) returns None. ``kwargs`` go to the block's constructor.
    An unknown key raises a ValueError listing the valid keys.
    """
    if key is None:
        return None
    cls = ATTENTION.get(key) or FUSION.get(key)
    if cls is None:
        raise ValueError(
            f"unknown attention key {key!r}; valid keys: {', '.join(sorted(ATTENTION))} "
            f"(fusion, two inputs: {', '.join(sorted(FUSION))})"
        )
    return cls(channels, **kwargs)


__all__ = [
    "ATTENTION",
    "FUSION",
    "create_attention",
    "functional",
    "AFF",
    "IAFF",
    "MultiScaleChannelAttention",
    "AxialAttention",
    "BAM",
    "CBAM",
    "ChannelAttention",
    "CoordAttention",
    "CrissCrossAttention",
    "NonLocal2d",
    "PositionAttention",
    "SelectiveKernel",
    "SqueezeExcite",
]
