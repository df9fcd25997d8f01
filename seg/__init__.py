"""seg: Lightning-native semantic segmentation with context-aggregation heads (see README.md).

``seg.load_model(path) -> (model, info)`` reads any seg checkpoint (:mod:`seg.loading`). It is imported on first
use, so ``import seg.deploy`` (the ONNX Runtime path) stays free of PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from seg.loading import load_model

        return load_model
    raise AttributeError(f"module 'seg' has no attribute {name!r}")
