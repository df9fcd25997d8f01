"""Small helpers shared by the attention blocks."""

from __future__ import annotations

from torch import nn


def reduced_channels(channels: int, reduction: float, min_channels: int = 8) -> int:
    """Hidden width of a bottleneck: ``channels / reduction``, but never below
    ``min(channels, min_channels)`` (so tiny blocks keep a usable width) and never 0."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    return max(int(channels / reduction), min(channels, min_channels), 1)


def conv_mlp(channels: int, hidden: int, act_layer: type[nn.Module]) -> nn.Sequential:
    """The channel MLP of pooled (B, C, 1, 1) descriptors: 1x1 conv -> act -> 1x1 conv, (B, C, 1, 1) out.

    1x1 convs rather than Linear layers so no squeeze() is needed (batch 1 and any spatial size work); no norm,
    since a norm over one value per channel fails for batch 1 in training. Children ``0`` / ``2`` are the convs.
    """
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=1),
        act_layer(),
        nn.Conv2d(hidden, channels, kernel_size=1),
    )
