"""FolderDataset: your own images and masks, the fine-tuning path.

Layout::

    {root}/{split}/images/<stem>.(png|jpg|jpeg|tif|tiff|bmp|webp)
    {root}/{split}/masks/<stem>.png
    {root}/classes.json          optional: {"classes": [...], "palette": [[r, g, b], ...],
                                            "ignore_colors": [[r, g, b], ...]}

Masks are either single-channel class-index PNGs (also palettised 'P' PNGs, whose indices are used), or RGB
colour PNGs decoded with `palette` (colours listed in `ignore_colors` become ignore). An index value that is
neither a class (0..C-1) nor `ignore_index`, or a colour that is neither in the palette nor in `ignore_colors`,
raises an error naming the file and the values; so does a JPEG file used as a mask.

Index masks stored another way are read with `label_map` ({value as stored: class index or 255}; binary masks
exported as 0/255 with classes [background, lesion]: ``{255: 1}``) or `reduce_zero_label` (0 = unlabelled ->
ignore, 1..C -> 0..C-1, as ADE20K stores them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .base import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    DataError,
    Palette,
    SegDataset,
    default_palette,
    index_lut,
    map_color_mask,
    map_index_mask,
)

META_FILE = "classes.json"


def read_meta(root: str | Path) -> dict[str, Any] | None:
    """`{root}/classes.json` as a dict (keys 'classes', optional 'palette'), or None if absent."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise DataError(f'{path}: expected {{"classes": [names...], "palette": [[r, g, b], ...]}}')
    return meta


def _check_palette(palette: Sequence[Sequence[int]], num_classes: int, where: str) -> Palette:
    out = [tuple(int(c) for c in rgb) for rgb in palette]
    if len(out) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in out):
        raise DataError(f"{where}: palette must hold {num_classes} RGB triples (0-255), one per class; got {palette}")
    if len(set(out)) != len(out):
        raise DataError(f"{where}: palette colours must be distinct; got {palette}")
    return out  # type: ignore[return-value]


def _check_colors(colors: Sequence[Sequence[int]], where: str) -> Palette:
    ok = all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in colors
    )
    if not ok:
        raise DataError(f"{where}: expected a list of RGB triples (0-255), got {colors}")
    return [tuple(c) for c in colors]  # type: ignore[misc]


def resolve_classes(
    root: str | Path, classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None
) -> tuple[list[str], Palette, bool]:
    """(class names, palette, masks-are-colour) from the arguments, else ``{root}/classes.json``."""
    root = Path(root)
    resolved: Palette = []
    if classes is None:
        meta = read_meta(root)
        if meta is None:
            raise DataError(
                f"{root}: no class names: pass classes=[...] or write {root / META_FILE} "
                '({"classes": [...], "palette": [[r, g, b], ...]})'
            )
        classes = meta["classes"]
        if palette is None and meta.get("palette") is not None:
            resolved = _check_palette(meta["palette"], len(classes), str(root / META_FILE))
    names = [str(c) for c in classes]
    if not 0 < len(names) < 255:
        raise DataError(f"{root}: need between 1 and 254 classes, got {len(names)}")
    if palette is not None:
        resolved = _check_palette(palette, len(names), "palette")
    elif not resolved:
        resolved = default_palette(len(names))
    return names, resolved, palette is not None


class FolderDataset(SegDataset):
    """Images and masks in ``{root}/{split}/images`` and ``{root}/{split}/masks``.

    Args:
        root: dataset folder.
        split: sub-folder name, e.g. 'train' or 'val'.
        classes: class names; None reads them from ``{root}/classes.json``.
        palette: RGB triple per class. When given explicitly, RGB masks are decoded with it (any other colour is
            an error); otherwise it comes from classes.json or a default palette (for visualisation).
            Single-channel masks are always class indices.
        ignore_colors: RGB triples that mean "ignore" in colour masks (e.g. VOC's (224, 224, 192) borders);
            None reads ``"ignore_colors"`` from ``{root}/classes.json`` (default: none).
        ignore_index: the mask value that means "ignore" in index masks; it is emitted as 255.
        transform: albumentations pipeline (see `seg.data.transforms`), or None for raw numpy samples.
        strict: see `SegDataset`.
        label_map: index masks: ``{value as stored: class index or 255}``, overriding the rules above for those
            values (`SegDataset.set_label_map`), e.g. ``{255: 1}`` for 0/255 binary masks.
        reduce_zero_label: index masks store 0 for "unlabelled" (-> 255) and class k as k + 1 (ADE20K's way).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        transform: Callable[..., dict[str, Any]] | None = None,
        strict: bool = True,
        ignore_colors: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        super().__init__(transform, strict)
        self.root = Path(root)
        self.split = split
        self.classes, self.palette, self.color_masks = resolve_classes(self.root, classes, palette)
        first = 1 if reduce_zero_label else 0  # the stored value of class 0
        if not 0 <= ignore_index <= 65535 or first <= ignore_index < first + len(self.classes):
            raise DataError(
                f"ignore_index={ignore_index} collides with a class value (classes are stored as {first}.."
                f"{first + len(self.classes) - 1}) or is outside 0..65535"
            )
        if self.color_masks and (label_map or reduce_zero_label):
            raise DataError(
                "label_map / reduce_zero_label map the values of index masks; colour masks are mapped by the palette "
                "(move a colour between palette and ignore_colors instead)"
            )
        self.file_ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        if ignore_colors is None:
            ignore_colors = (read_meta(self.root) or {}).get("ignore_colors") or []
        self.ignore_colors = _check_colors(ignore_colors, "ignore_colors")
        clash = set(self.ignore_colors) & set(self.palette) if self.color_masks else set()
        if clash:
            raise DataError(
                f"ignore_colors {sorted(clash)} are also class colours in the palette; remove them from one"
            )
        self._lut = index_lut(len(self.classes), ignore_index, size=65536, reduce_zero_label=reduce_zero_label)
        self.set_label_map(label_map)
        stored = f"{first}..{first + len(self.classes) - 1}"
        self._valid = f"classes {stored}, ignore {'0 and ' if reduce_zero_label else ''}{ignore_index}" + (
            f", label_map {self.label_map}" if self.label_map else ""
        )

        image_dir, mask_dir = self.root / split / "images", self.root / split / "masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise DataError(f"{d}: missing folder; expected {{root}}/{split}/images and {{root}}/{split}/masks")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self._pair(images, lambda p: mask_dir / f"{p.stem}.png", f"{self.root}/{split}")

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 3:
            if self.color_masks:
                return map_color_mask(raw, self.palette, path, self.ignore_colors)
            if (raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all():
                raw = raw[..., 0]  # a grayscale index mask saved as RGB
            else:
                raise DataError(
                    f"{path}: RGB colour mask but no palette was given; pass palette=[[r, g, b], ...] "
                    "(one per class) or save single-channel class-index PNGs"
                )
        return map_index_mask(raw, self._lut, path, self._valid)
