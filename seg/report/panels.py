"""One picture per worst image: image | ground truth | prediction | error map, with the legend of the classes the
image's ground truth or prediction holds. The image is read again from its path; ground truth and prediction come
from the evaluation pass (:class:`seg.report.collect.WorstImages`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.patches import Patch

from seg.report.collect import WorstImage
from seg.report.figures import FONT, plt, save

__all__ = ["colourise", "error_map", "worst_panel"]

IGNORE_BLACK = (0, 0, 0)  # in the label maps: grey is a class colour in many palettes
IGNORE_GREY = (200, 200, 200)  # in the error map, which has no class colours
WRONG_RED = (255, 32, 32)


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB with the class colours; ignore (and unknown labels) black."""
    lut = np.tile(np.array(IGNORE_BLACK, np.uint8), (max(int(labels.max()) + 1, len(palette), 256), 1))
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    if ignore_index < len(lut):
        lut[ignore_index] = IGNORE_BLACK
    return lut[labels.astype(np.int64)]


def error_map(image: np.ndarray | None, pred: np.ndarray, mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Wrong pixels red, ignore grey, right pixels the image darkened (black without an image)."""
    h, w = mask.shape
    out = (image.astype(np.float32) * 0.35).astype(np.uint8) if image is not None else np.zeros((h, w, 3), np.uint8)
    ignore = mask == ignore_index
    out[(pred != mask) & ~ignore] = WRONG_RED
    out[ignore] = IGNORE_GREY
    return out


def _read_image(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The RGB image at ``path`` at the mask's size, or None when it cannot be read (moved, not a file)."""
    from seg.data.base import read_image

    try:
        img = read_image(path)
    except (OSError, ValueError):
        return None
    if img.shape[:2] != shape:
        import cv2

        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return img


def worst_panel(
    item: WorstImage,
    rank: int,
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: str | Path,
    ignore_index: int = 255,
) -> Path:
    """Write the panel row of one worst image to ``path`` (PNG)."""
    mask, pred = item.mask, item.pred
    h, w = mask.shape
    image = _read_image(item.path, (h, w))
    wrong = int(((pred != mask) & (mask != ignore_index)).sum())
    labelled = int((mask != ignore_index).sum())
    tiles = [
        (
            "image" if image is not None else "image (not readable)",
            image if image is not None else np.zeros_like(colourise(mask, palette, ignore_index)),
        ),
        ("ground truth", colourise(mask, palette, ignore_index)),
        ("prediction", colourise(pred, palette, ignore_index)),
        (f"errors: {wrong:,} of {labelled:,} px wrong (red), ignore grey", error_map(image, pred, mask, ignore_index)),
    ]
    width = 16.0
    tile_h = min(width / 4 * h / w, 6.0)
    present = sorted(set(np.unique(mask).tolist()) | set(np.unique(pred).tolist()))
    present = [c for c in present if c != ignore_index and c < len(names)]
    ncol = 8
    legend_h = 0.25 * ((len(present) + 1 + ncol - 1) // ncol) + 0.3  # + 1: the ignore entry
    fig, axes = plt.subplots(1, 4, figsize=(width, tile_h + legend_h + 0.6))
    for ax, (title, tile) in zip(axes, tiles):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(title, fontsize=FONT)
        ax.set_axis_off()
    fig.suptitle(f"#{rank}  mIoU {100 * item.mIoU:.1f} %   {Path(item.path).name}", fontsize=FONT + 2)
    handles = [Patch(facecolor=np.asarray(palette[c]) / 255, edgecolor="#444444", label=names[c]) for c in present]
    if (mask == ignore_index).any():
        handles.append(Patch(facecolor="black", edgecolor="#444444", label="ignore (error map: light grey)"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=FONT, frameon=False)
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        top=1 - 0.6 / (tile_h + legend_h + 0.6),
        wspace=0.03,
        bottom=legend_h / (tile_h + legend_h + 0.6),
    )
    return save(fig, path, dpi=80)
