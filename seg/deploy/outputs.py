"""Writing predictions: one implementation for both ``seg.predict`` paths (reading is `seg.deploy.images`).

For an image ``name.ext`` the outputs are ``name.png`` (class-index mask, uint8), ``name_color.png``
(palette colours) and ``name_overlay.jpg`` (colours blended over the image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["write_prediction"]


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
