"""seg: Lightning-native semantic segmentation with context-aggregation heads (see README.md).

``seg.load(path) -> Segmenter`` serves a checkpoint in Python (``.predict(image)``, :mod:`seg.segmenter`);
``seg.load_model(path) -> (model, info)`` is the lower-level reader of any seg checkpoint (:mod:`seg.loading`). Both
are imported on first use, so ``import seg.deploy`` (the ONNX Runtime path) stays free of PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Segmenter", "load", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from seg.loading import load_model

        return load_model
    if name in ("load", "Segmenter"):
        from seg import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'seg' has no attribute {name!r}")
