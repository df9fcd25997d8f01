"""Writing predictions: one implementation for both ``seg.predict`` paths (reading is `seg.deploy.images`).

For an image ``name.ext`` the outputs are ``name.png`` (class-index mask: an 8-bit palette PNG, "P" mode, whose
pixel values are the class indices and whose palette holds the class colours, as VOC / mmseg masks: PIL
``np.array(Image.open(p))`` and ``seg.data.base.read_mask`` read the indices, an image viewer shows the colours;
OpenCV's ``imread`` expands every palette to colours, with no flag to keep the indices), ``name_color.png``
(palette colours, RGB) and ``name_overlay.jpg`` (colours blended over the image). Every output folder also gets
``legend.png``: each class's colour swatch and name (`write_legend`). Two inputs that would write the same file
(``x.jpg`` and ``x.png``) are both named after their whole file name instead: ``x.jpg.png``, ``x.jpg_color.png``,
``x.jpg_overlay.jpg`` and ``x.png.png``, ... (`output_stems`).

How sure the model is (``seg.predict --confidence``): ``name_confidence.png``, the highest class probability of
each pixel, and ``name_entropy.png``, the entropy of its class probabilities divided by log C (C classes), both
heat maps on the fixed scale 0..1 (`confidence_maps`, the one formula; colours `seg.deploy.colormaps`: viridis
for confidence, magma for entropy), with ``confidence_legend.png`` and ``entropy_legend.png`` (colour bars) once
per folder. ``--save_probs`` writes ``name_probs.npy``: the (C, H, W) float32 probabilities at the image's size
(4 C H W bytes: 19 classes at 1024x2048 are 160 MB). Both sets of names join the clash rule only when written.

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

from .colormaps import COLORMAPS, apply_colormap
from .images import MAX_PIXELS, ImageError, read_rgb

__all__ = [
    "SkippedImages",
    "colorize",
    "confidence_maps",
    "output_stems",
    "predict_images",
    "write_colorbar",
    "write_confidence",
    "write_legend",
    "write_prediction",
]

LEGEND = "legend.png"
CONFIDENCE_OUTPUTS = ("_confidence.png", "_entropy.png")  # name + suffix, with --confidence
PROBS_OUTPUT = "_probs.npy"  # with --save_probs
CONFIDENCE_LEGENDS = ("confidence_legend.png", "entropy_legend.png")
CONFIDENCE_COLORMAP, ENTROPY_COLORMAP = "viridis", "magma"
CONFIDENCE_HELP = (
    "also write name_confidence.png (max class probability) and name_entropy.png (entropy / log C), heat maps on "
    "a fixed 0..1 scale, + their colour bars"
)
SAVE_PROBS_HELP = "also write name_probs.npy: (C, H, W) float32 probabilities at the image's size (4*C*H*W bytes)"


class SkippedImages(RuntimeError):
    """Some inputs could not be read; every other prediction was written (`written`)."""

    def __init__(self, skipped: dict[Path, str], written: list[Path], out_dir: Path) -> None:
        self.skipped, self.written = skipped, written
        lines = "".join(f"\n  {reason}" for reason in skipped.values())
        super().__init__(
            f"{len(skipped)} of {len(skipped) + len(written)} images could not be read and have no prediction "
            f"(the other {len(written)} are in {out_dir}):{lines}"
        )


def _outputs(stem: str, extras: Sequence[str] = ()) -> tuple[str, ...]:
    return (f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.jpg", *(stem + suffix for suffix in extras))


def output_stems(images: Sequence[Path], extras: Sequence[str] = (), legends: Sequence[str] = ()) -> dict[Path, str]:
    """The name each image's outputs start with: its stem, or its whole file name for images whose outputs would
    otherwise meet another's (``x.jpg`` / ``x.png``; also ``x.jpg`` / ``x_color.png``) or the folder's
    ``legend.png`` (an input ``legend.jpg``). ``extras``: the suffixes of the outputs written besides the three
    (``_confidence.png``, ...), ``legends``: the folder's files besides ``legend.png``. Names are compared
    case-blind, as macOS and Windows file systems do. Whole names never meet: each ends in its own extension."""
    whole: set[Path] = set()
    while True:
        stems = {p: p.name if p in whole else p.stem for p in images}
        owners: dict[str, set[Path]] = defaultdict(set)
        for path, stem in stems.items():
            for name in _outputs(stem, extras):
                owners[name.casefold()].add(path)
        clashing = {p for paths in owners.values() if len(paths) > 1 for p in paths} - whole
        for legend in (LEGEND, *legends):
            clashing |= owners.get(legend.casefold(), set()) - whole
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


def confidence_maps(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How sure a prediction is, per pixel: ``(max_prob, entropy)`` of class probabilities ``probs`` (C, ...), class
    axis first, e.g. the (C, H, W) of ``seg.load(ckpt).predict(image, output="probs")`` or a ``_probs.npy``.

    ``max_prob`` (...) float32: the winning class's probability, from 1/C (all classes equal) to 1 (certain).
    ``entropy`` (...) float32: ``-sum_c p_c log p_c / log C``, from 0 (certain) to 1 (all classes equal); 0 for C = 1.
    What ``seg.predict --confidence`` draws (with test-time scales / flip / slide: of the averaged probabilities).
    """
    p = np.asarray(probs, dtype=np.float32)  # (C, ...)
    if p.ndim == 0 or p.shape[0] == 0:
        raise ValueError(f"confidence_maps: expected (C, H, W) class probabilities, got shape {p.shape}")
    lo, hi = (float(p.min()), float(p.max())) if p.size else (0.0, 1.0)
    if not (lo >= -1e-4 and hi <= 1 + 1e-4):  # also catches NaN
        raise ValueError(
            f"confidence_maps: expected probabilities (values in 0..1, summing to 1 over axis 0), got values in "
            f"[{lo:g}, {hi:g}]: pass predict(..., output='probs'), not logits"
        )
    max_prob = p.max(axis=0)
    if p.shape[0] == 1:
        return max_prob, np.zeros_like(max_prob)
    plogp = p * np.log(np.maximum(p, np.finfo(np.float32).tiny))  # (C, ...); 0 log 0 = 0
    entropy = np.clip(-plogp.sum(axis=0) / np.float32(np.log(p.shape[0])), 0, 1).astype(np.float32)
    return max_prob, entropy


def write_confidence(out_dir: Path, stem: str, probs: np.ndarray) -> None:
    """``stem_confidence.png`` and ``stem_entropy.png``: `confidence_maps` of ``probs`` (C, H, W) as RGB heat maps
    on the fixed scale 0..1 (``round(255 v)`` indexes the colour map)."""
    for suffix, values, cmap in zip(
        CONFIDENCE_OUTPUTS, confidence_maps(probs), (CONFIDENCE_COLORMAP, ENTROPY_COLORMAP)
    ):
        heat = apply_colormap(values, cmap)  # (H, W, 3) RGB
        cv2.imwrite(str(out_dir / f"{stem}{suffix}"), cv2.cvtColor(heat, cv2.COLOR_RGB2BGR))  # as name_color.png


def write_colorbar(path: Path, cmap: str, title: str, width: int = 256) -> Path:
    """``path``: a colour bar of ``cmap`` from 0 (left) to 1 (right), ``title`` above, ticks 0, 0.5, 1 below."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, bar_h, text_h = 8, 20, 12
    size = (max(width, int(probe.textlength(title, font=font))) + 2 * pad, bar_h + 2 * text_h + 4 * pad)  # (W, H)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill="black", font=font)
    top = pad + text_h + pad
    lut = COLORMAPS[cmap][np.linspace(0, 255, width).round().astype(int)]  # (width, 3)
    image.paste(Image.fromarray(np.repeat(lut[None], bar_h, axis=0)), (pad, top))
    draw.rectangle([pad - 1, top - 1, pad + width, top + bar_h], outline=(96, 96, 96))
    for value, label in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        x = pad + round(value * (width - 1))
        draw.line([x, top + bar_h, x, top + bar_h + 4], fill="black")
        tw = probe.textlength(label, font=font)
        draw.text((min(max(x - tw / 2, 0), image.size[0] - tw), top + bar_h + 6), label, fill="black", font=font)
    image.save(path)
    return path


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
    confidence: bool = False,
    save_probs: bool = False,
) -> list[Path]:
    """Predict every image (``predict``: (H, W, 3) uint8 RGB -> (H, W) class indices, or (C, H, W) probabilities,
    whose argmax is the mask) and write its outputs, and ``legend.png`` (``classes``: the names; None: ``class i``).
    ``confidence`` / ``save_probs`` (``predict`` gives probabilities then) add the confidence and entropy heat
    maps and their colour bars / the ``_probs.npy`` (module docstring).

    An image that cannot be read (empty, corrupt, above ``max_pixels``, no permission) is skipped with a warning
    on stderr, so one bad file does not cost the rest of a folder; the run then ends with `SkippedImages` naming
    every skipped file, so a script sees the failure (``seg.predict`` exits with 1). Returns the index masks.
    """
    extras = (*(CONFIDENCE_OUTPUTS if confidence else ()), *((PROBS_OUTPUT,) if save_probs else ()))
    stems = output_stems(images, extras, CONFIDENCE_LEGENDS if confidence else ())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_legend(out_dir / LEGEND, classes, palette)
    if confidence:
        n = len(palette)
        write_colorbar(
            out_dir / CONFIDENCE_LEGENDS[0], CONFIDENCE_COLORMAP, f"max class probability (1/C = {1 / n:.2g})"
        )
        write_colorbar(out_dir / CONFIDENCE_LEGENDS[1], ENTROPY_COLORMAP, "entropy / log C (0: sure, 1: all equal)")
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
        pred = predict(rgb)  # (H, W) labels or (C, H, W) probabilities
        if pred.ndim == 3:
            probs, pred = pred, pred.argmax(axis=0)
            if confidence:
                write_confidence(out_dir, stems[path], probs)
            if save_probs:
                np.save(out_dir / f"{stems[path]}{PROBS_OUTPUT}", probs.astype(np.float32, copy=False))
        elif confidence or save_probs:
            raise ValueError("confidence maps and _probs.npy need probabilities; predict gave class indices")
        written.append(write_prediction(out_dir, stems[path], rgb, pred, palette, alpha))
    also = ", ".join(["_color.png", "_overlay.jpg", *extras])
    legends = ", ".join([LEGEND, *(CONFIDENCE_LEGENDS if confidence else ())])
    print(f"wrote {len(written)} masks (+ {also}) and {legends} to {out_dir}{engine}")
    if skipped:
        raise SkippedImages(skipped, written, out_dir)
    return written
