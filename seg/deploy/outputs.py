"""Writing predictions: one implementation for both ``seg.predict`` paths (reading is `seg.deploy.images`).

For an image ``name.ext`` the outputs are ``name.png`` (class-index mask: an 8-bit palette PNG, "P" mode, whose
pixel values are the class indices and whose palette holds the class colours, as VOC / mmseg masks: PIL
``np.array(Image.open(p))`` and ``seg.data.base.read_mask`` read the indices, an image viewer shows the colours;
OpenCV's ``imread`` expands every palette to colours, with no flag to keep the indices), ``name_color.png``
(palette colours, RGB) and ``name_overlay.jpg`` (colours blended over the image). Every output folder also gets
``legend.png``: each class's colour swatch and name (`write_legend`). Two inputs that would write the same file
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
from PIL import Image, ImageDraw, ImageFont

from .images import MAX_PIXELS, ImageError, read_rgb

__all__ = ["SkippedImages", "colorize", "output_stems", "predict_images", "write_legend", "write_prediction"]

LEGEND = "legend.png"


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
    otherwise meet another's (``x.jpg`` / ``x.png``; also ``x.jpg`` / ``x_color.png``) or the folder's
    ``legend.png`` (an input ``legend.jpg``). Names are compared case-blind, as macOS and Windows file systems do.
    Whole names never meet: each ends in its own extension."""
    whole: set[Path] = set()
    while True:
        stems = {p: p.name if p in whole else p.stem for p in images}
        owners: dict[str, set[Path]] = defaultdict(set)
        for path, stem in stems.items():
            for name in _outputs(stem):
                owners[name.casefold()].add(path)
        clashing = {p for paths in owners.values() if len(paths) > 1 for p in paths} - whole
        clashing |= owners.get(LEGEND, set()) - whole
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
    mask = Image.fromarray(label)  # mode "L": the indices
    mask.putpalette(
        np.asarray(palette, dtype=np.uint8).reshape(-1).tolist()
    )  # -> mode "P": the same indices, and the class colours for viewers
    mask.save(out_dir / mask_name, optimize=False)
    cv2.imwrite(str(out_dir / color_name), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / overlay_name), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return out_dir / mask_name


def write_legend(
    path: Path, classes: Sequence[str] | None, palette: Sequence[Sequence[int]], rows_per_column: int = 30
) -> Path:
    """``path``: one row per class, its colour swatch (outlined, so a white or black class shows) and
    ``index name``; more than ``rows_per_column`` classes (ADE20K's 150) go into several columns."""
    names = list(classes) if classes is not None else [f"class {i}" for i in range(len(palette))]
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{i} {name}" for i, name in enumerate(names)]
    text_w = max(int(probe.textlength(t, font=font)) for t in labels) if labels else 0
    row_h, swatch, pad = 18, 28, 6
    n_rows = min(len(labels), rows_per_column) or 1
    n_cols = -(-len(labels) // rows_per_column) or 1
    col_w = pad + swatch + pad + text_w + 2 * pad
    image = Image.new("RGB", (n_cols * col_w + pad, n_rows * row_h + 2 * pad), "white")
    draw = ImageDraw.Draw(image)
    for i, (text, rgb) in enumerate(zip(labels, palette)):
        x = pad + (i // rows_per_column) * col_w
        y = pad + (i % rows_per_column) * row_h
        draw.rectangle([x, y + 2, x + swatch, y + row_h - 3], fill=tuple(int(c) for c in rgb), outline=(96, 96, 96))
        draw.text((x + swatch + pad, y + 3), text, fill="black", font=font)
    image.save(path)
    return path


def predict_images(
    images: Sequence[Path],
    out_dir: Path,
    predict: Callable[[np.ndarray], np.ndarray],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    max_pixels: int = MAX_PIXELS,
    engine: str = "",
    classes: Sequence[str] | None = None,
) -> list[Path]:
    """Predict every image (``predict``: (H, W, 3) uint8 RGB -> (H, W) class indices) and write its outputs,
    and ``legend.png`` (``classes``: the names; None: ``class i``).

    An image that cannot be read (empty, corrupt, above ``max_pixels``, no permission) is skipped with a warning
    on stderr, so one bad file does not cost the rest of a folder; the run then ends with `SkippedImages` naming
    every skipped file, so a script sees the failure (``seg.predict`` exits with 1). Returns the index masks.
    """
    stems = output_stems(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_legend(out_dir / LEGEND, classes, palette)
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
    print(f"wrote {len(written)} masks (+ _color.png, _overlay.jpg) and {LEGEND} to {out_dir}{engine}")
    if skipped:
        raise SkippedImages(skipped, written, out_dir)
    return written
