"""Reading input images and writing predictions: one implementation for both ``seg.predict`` paths.

For an image ``name.ext`` the outputs are ``name.png`` (class-index mask, uint8), ``name_color.png``
(palette colours) and ``name_overlay.jpg`` (colours blended over the image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["IMAGE_EXTS", "list_images", "read_rgb", "write_prediction"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def list_images(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the images in the folder (sorted); a clear error if none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither an image nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot read image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_prediction(
    out_dir: Path, stem: str, rgb: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> Path:
    """Writes the index mask, colour mask and overlay of one image; returns the index mask's path."""
    pal = np.asarray(palette, dtype=np.uint8)  # (C, 3) RGB
    if label.max(initial=0) >= len(pal):
        raise ValueError(f"{stem}: predicted class {int(label.max())} has no palette colour ({len(pal)} colours)")
    label = label.astype(np.uint8)  # (H, W)
    color = pal[label]  # (H, W, 3) RGB
    overlay = (rgb * (1 - alpha) + color * alpha).astype(np.uint8)
    cv2.imwrite(str(out_dir / f"{stem}.png"), label)
    cv2.imwrite(str(out_dir / f"{stem}_color.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / f"{stem}_overlay.jpg"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return out_dir / f"{stem}.png"
