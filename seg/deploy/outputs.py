"""Writing predictions: one implementation for both ``seg.predict`` paths (reading is `seg.deploy.images`).

For an image ``name.ext`` the outputs are ``name.png`` (class-index mask, uint8), ``name_color.png`` (palette
colours) and ``name_overlay.jpg`` (colours blended over the image). Two inputs that would write the same file
(``x.jpg`` and ``x.png``) are both named after their whole file name instead: ``x.jpg.png``, ``x.jpg_color.png``,
``x.jpg_overlay.jpg`` and ``x.png.png``, ... (`output_stems`).

`predict_images` is the loop both paths run: an image that cannot be read is skipped with a warning, every other
prediction is written, and `SkippedImages` lists the skipped ones at the end (``seg.predict`` exits with 1).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .images import MAX_PIXELS, ImageError, read_rgb

__all__ = ["SkippedImages", "colorize", "output_stems", "predict_images", "write_prediction"]


class SkippedImages(RuntimeError):
    """Some inputs could not be read; every other prediction was written (`written`)."""

    def __init__(self, skipped: dict[Path, str], written: list[Path], out_dir: Path) -> None:
        self.skipped, self.written = skipped, written
        lines = "".join(f"\n  {reason}" for reason in skipped.values())
        super().__init__(
            f"{len(skipped)} of {len(skipped) + len(written)} images could not be read and have no prediction "
            f"(the other {len(written)} are in {out_dir}):{lines}"
        )


def _outputs(stem: str) -> tuple[str, str, str]:
    return f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.jpg"


def output_stems(images: Sequence[Path]) -> dict[Path, str]:
    """The name each image's outputs start with: its stem, or its whole file name for images whose outputs would
    otherwise meet another's (``x.jpg`` / ``x.png``; also ``x.jpg`` / ``x_color.png``). Names are compared
    case-blind, as macOS and Windows file systems do. Whole names never meet: each ends in its own extension."""
    whole: set[Path] = set()
    while True:
        stems = {p: p.name if p in whole else p.stem for p in images}
        owners: dict[str, set[Path]] = defaultdict(set)
        for path, stem in stems.items():
            for name in _outputs(stem):
                owners[name.casefold()].add(path)
        clashing = {p for paths in owners.values() if len(paths) > 1 for p in paths} - whole
        if not clashing:
            return stems
        whole |= clashing


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], name: str = "mask") -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB: each pixel the colour ``palette[class]``."""
    pal = np.asarray(palette, dtype=np.uint8)  # (C, 3) RGB
    if label.size and (label.min() < 0 or label.max() >= len(pal)):
        bad = int(label.min()) if label.min() < 0 else int(label.max())
        raise ValueError(f"{name}: class {bad} has no palette colour ({len(pal)} colours, classes 0-{len(pal) - 1})")
    return pal[label]


def write_prediction(
    out_dir: Path, stem: str, rgb: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> Path:
    """Writes the index mask, colour mask and overlay of one image; returns the index mask's path."""
    color = colorize(label, palette, stem)  # (H, W, 3) RGB
    label = label.astype(np.uint8)  # (H, W)
    overlay = (rgb * (1 - alpha) + color * alpha).astype(np.uint8)
    mask_name, color_name, overlay_name = _outputs(stem)
    cv2.imwrite(str(out_dir / mask_name), label)
    cv2.imwrite(str(out_dir / color_name), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / overlay_name), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return out_dir / mask_name


def predict_images(
    images: Sequence[Path],
    out_dir: Path,
    predict: Callable[[np.ndarray], np.ndarray],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    max_pixels: int = MAX_PIXELS,
    engine: str = "",
) -> list[Path]:
    """Predict every image (``predict``: (H, W, 3) uint8 RGB -> (H, W) class indices) and write its outputs.

    An image that cannot be read (empty, corrupt, above ``max_pixels``, no permission) is skipped with a warning
    on stderr, so one bad file does not cost the rest of a folder; the run then ends with `SkippedImages` naming
    every skipped file, so a script sees the failure (``seg.predict`` exits with 1). Returns the index masks.
    """
    stems = output_stems(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: dict[Path, str] = {}
    for path in images:
        try:
            rgb = read_rgb(path, max_pixels)
        except (ImageError, OSError) as err:
            skipped[path] = (
                str(err) if isinstance(err, ImageError) else f"{path}: cannot read the file ({err.strerror or err})"
            )
            print(f"warning: skipping {skipped[path]}", file=sys.stderr, flush=True)
            continue
        written.append(write_prediction(out_dir, stems[path], rgb, predict(rgb), palette, alpha))
    print(f"wrote {len(written)} masks (+ _color.png, _overlay.jpg) to {out_dir}{engine}")
    if skipped:
        raise SkippedImages(skipped, written, out_dir)
    return written
