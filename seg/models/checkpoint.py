"""Seg checkpoints written outside training (e.g. by ``python -m seg.convert``) and read back.

Layout (docs/design.md): ``{'state_dict': {'model.<SegmentationModel key>': tensor}, 'seg_model': {...}}``.
``state_dict`` matches what the LightningModule saves (it holds the network as ``self.model``);
``seg_model`` holds the ``build_model`` arguments, so ``build_model(**ckpt['seg_model'])`` rebuilds
the architecture.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .segmentation_model import SegmentationModel, build_model

__all__ = ["load_seg_checkpoint", "save_seg_checkpoint"]

PREFIX = "model."


def save_seg_checkpoint(model: SegmentationModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a seg checkpoint, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if not model.build_args:
        raise ValueError("model.build_args is empty: build the model with seg.models.build_model")
    ckpt = {
        "state_dict": {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "seg_model": dict(model.build_args),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_seg_checkpoint(path: str | Path) -> SegmentationModel:
    """Rebuild and load a model from a checkpoint with ``seg_model`` (eval mode)."""
    path = Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "seg_model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a seg checkpoint (needs 'state_dict' and 'seg_model' entries)")
    model = build_model(**ckpt["seg_model"])
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    from .mmseg import load_converted_state_dict

    load_converted_state_dict(model, state, source=str(path))
    return model.eval()
