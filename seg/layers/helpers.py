"""Small helpers shared by the attention blocks."""
from __future__ import annotations


def reduced_channels(channels: int, reduction: float, min_channels: int = 8) -> int:
    """Hidden width of a bottleneck: ``channels / reduction``, but never below
    ``min(channels, min_channels)`` (so tiny blocks keep a usable width) and never 0."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    return max(int(channels / reduction), min(channels, min_channels), 1)
