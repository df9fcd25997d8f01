"""seg: Lightning-native semantic segmentation with context-aggregation heads (see README.md).

``seg.load(path) -> Segmenter`` serves a checkpoint in Python (``.predict(image)``, :mod:`seg.segmenter`);
``seg.load_model(path) -> (model, info)`` is the lower-level reader of any seg checkpoint (:mod:`seg.loading`);
``seg.confidence_maps(probs)`` says how sure a prediction is per pixel (:mod:`seg.deploy.outputs`). All are imported
on first use, so ``import seg.deploy`` (the ONNX Runtime path) stays free of PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Segmenter", "confidence_maps", "load", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from seg.loading import load_model

        return load_model
    if name in ("load", "Segmenter"):
        from seg import segmenter

        return getattr(segmenter, name)
    if name == "confidence_maps":  # (max probability, entropy / log C) of predict(..., output="probs"); torch-free
        from seg.deploy.outputs import confidence_maps

        return confidence_maps
    raise AttributeError(f"module 'seg' has no attribute {name!r}")
