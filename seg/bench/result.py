"""One benchmark row: what was measured, on which case and implementation (JSON-serialisable via ``asdict``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Result"]


@dataclass
class Result:
    part: str  # 'core' | 'train' | 'infer'
    name: str  # core or head name
    shape: str
    impl: str  # 'seg' | 'explicit'
    dtype: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_mb: float | None = None
    img_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)
