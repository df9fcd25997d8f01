"""Class names, palette and test scale of a model from what it knows about its data: the one rule
:func:`seg.loading.load_model` (older checkpoints) and ``seg.convert`` / ``mmseg:`` zoo conversions use."""

from __future__ import annotations

from typing import Any

from .ade20k import ADE20KDataset
from .base import default_palette
from .cityscapes import CityscapesDataset
from .datamodule import test_scale_of
from .folder import resolve_classes

__all__ = ["dataset_meta"]


def dataset_meta(dataset: str | None, num_classes: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Class names, palette and test scale for a model of ``num_classes`` trained on ``dataset`` ('cityscapes',
    'ade20k', 'folder' with the data settings ``data``; None: the benchmark with that many classes, 19 Cityscapes
    or 150 ADE20K). Generic names (``class_0`` ...) and colours where they cannot be resolved on this machine."""
    data = dict(data or {})
    known = {"cityscapes": CityscapesDataset, "ade20k": ADE20KDataset}
    if dataset is None:
        dataset = next((name for name, cls in known.items() if len(cls.CLASSES) == num_classes), None)
    names: list[str] | None = None
    palette: list[Any] = []
    if dataset in known:
        names, palette = list(known[dataset].CLASSES), list(known[dataset].PALETTE)
    elif dataset == "folder":
        try:
            names, palette, _ = resolve_classes(data.get("root", "data/demo"), data.get("classes"), data.get("palette"))
        except (OSError, ValueError):  # e.g. the data folder (its classes.json) is not on this machine
            names = None
    if names is None or len(names) != num_classes:
        names, palette = [f"class_{i}" for i in range(num_classes)], default_palette(num_classes)
    scale = test_scale_of({**data, "dataset": dataset}) if dataset is not None else None
    return {"classes": names, "palette": palette, "test_scale": scale, "dataset": dataset}
