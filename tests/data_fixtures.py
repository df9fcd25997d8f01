"""Helpers that write tiny dataset trees (Folder, Cityscapes, ADE20K layouts) for the seg.data tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def write_rgb(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)  # 2-D uint8 -> 'L', HxWx3 -> 'RGB'
    return path


def blocks_mask(h: int, w: int, values: list[int]) -> np.ndarray:
    """Vertical bands of the given values (left to right)."""
    mask = np.zeros((h, w), np.uint8)
    for k, v in enumerate(values):
        mask[:, k * w // len(values) : (k + 1) * w // len(values)] = v
    return mask


def folder_tree(
    root: Path,
    split: str = "train",
    n: int = 3,
    size: tuple[int, int] = (24, 32),
    values: list[int] = (0, 1, 2, 255),
    classes: list[str] | None = None,
) -> Path:
    """{root}/{split}/images/*.png + masks/*.png with band masks; optional classes.json."""
    h, w = size
    rng = np.random.default_rng(0)
    for i in range(n):
        write_rgb(root / split / "images" / f"im{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_mask(root / split / "masks" / f"im{i}.png", blocks_mask(h, w, list(values)))
    if classes is not None:
        import json

        (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return root
