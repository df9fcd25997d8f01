"""Common base for the segmentation datasets: decoding, label checks, and the sample contract.

Every dataset lists `(image, mask)` file pairs and knows how to turn a raw mask file into train ids.
Without a transform ``ds[i]`` is::

    {'image': HxWx3 uint8 RGB numpy, 'mask': HxW int64 numpy (train ids, 255 = ignore), 'path': str}

With an albumentations transform the image comes back as a float32 (3, H, W) tensor and the mask as an
int64 (H, W) tensor (what `SegDataModule` batches).

Bad input never passes silently: an unreadable file, an image/mask size mismatch or a mask value that is
neither a class nor ignore raises `DataError` naming the file and the offending values.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from seg.deploy.images import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS  # the one list (seg.predict's too)
from seg.deploy.images import ImageError, decode_image

from . import png
from .cache import FileCache
from .rows import MappedRows, RowReader
from .seeding import reseed_transform

IGNORE_INDEX = 255

Palette = list[tuple[int, int, int]]
JPEG_SIGNATURE = b"\xff\xd8\xff"  # every JPEG/JFIF/EXIF file starts with SOI + a marker


class DataError(ValueError):
    """A problem with the data on disk (the message names the file and what is wrong)."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB in its displayed layout: `seg.deploy.images.decode_image`, the one
    decoding rule of training, validation, the decode cache and ``seg.predict`` (EXIF orientation applied,
    greyscale expanded, alpha dropped, 16-bit rescaled).

    8-bit RGB(A) PNGs without an orientation go through `seg.data.png` when the `fast` extra is installed (same
    pixels, ~1.7x faster). No pixel limit: training data is chosen by the user (OpenCV's own 2^30 still applies).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    raw = path.read_bytes()
    img = png.decode(raw, "RGB")
    if img is not None:
        return img
    try:
        return decode_image(raw, path)
    except ImageError as e:
        raise DataError(str(e)) from e


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file without any colour conversion: HxW (index/P-mode/grayscale) or HxWx3 (RGB colours).

    PIL keeps palettised ('P') PNGs as their indices, which is what VOC-style masks mean. 8-bit PNGs go through
    `seg.data.png` when the `fast` extra is installed (the same values as PIL's, faster).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file does not exist")
    raw = path.read_bytes()
    fast = png.decode(raw, "mask")
    if fast is not None:
        return fast
    if raw[:3] == JPEG_SIGNATURE:
        raise DataError(
            f"{path}: this mask is a JPEG file{' (named ' + path.suffix + ')' if path.suffix else ''}: JPEG "
            "compression changes label values along edges, which silently mislabels pixels. Re-export the mask "
            "losslessly as PNG from the original labels (converting this JPEG to PNG keeps the damage)."
        )
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            if im.mode in ("RGBA", "LA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            elif im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "RGB"):
                raise DataError(f"{path}: unsupported mask mode {im.mode!r}; save masks as 8-bit index PNGs")
            arr = np.array(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: cannot decode mask ({type(e).__name__}: {e}); re-export it as a PNG") from e
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def _format_values(values: np.ndarray, limit: int = 10) -> str:
    values = np.unique(values)
    text = ", ".join(str(int(v)) for v in values[:limit])
    return text + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def map_index_mask(raw: np.ndarray, lut: np.ndarray, path: Path | str, valid: str) -> np.ndarray:
    """Map an integer mask through a lookup table; entries of -1 are invalid and raise `DataError`.

    Args:
        raw: HxW integer mask as stored in the file.
        lut: int64 table indexed by stored value -> train id (255 ignore) or -1 (not allowed).
        path: file name for the error message.
        valid: human description of the allowed values, for the error message.

    Returns:
        HxW uint8 train ids (255 ignore).
    """
    if raw.ndim != 2:
        raise DataError(f"{path}: expected a single-channel index mask, got shape {raw.shape}")
    if raw.dtype == np.uint8 and len(lut) >= 256:  # fast path (all common masks): one histogram, one table
        raw = np.ascontiguousarray(raw)  # OpenCV's histogram and LUT: ~4x numpy's bincount and gather
        present = cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel() > 0
        bad = present & (lut[:256] < 0)
        if bad.any():
            raise DataError(
                f"{path}: mask values {_format_values(np.flatnonzero(bad))} are neither a class nor ignore ({valid})"
            )
        return cv2.LUT(raw, np.maximum(lut[:256], 0).astype(np.uint8))
    raw = raw.astype(np.int64, copy=False)
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi >= len(lut):
        bad_values = raw[(raw < 0) | (raw >= len(lut))]
        raise DataError(f"{path}: mask values {_format_values(bad_values)} are neither a class nor ignore ({valid})")
    out = lut[raw]
    if out.min() < 0:
        raise DataError(f"{path}: mask values {_format_values(raw[out < 0])} are neither a class nor ignore ({valid})")
    return out.astype(np.uint8)


def index_lut(
    num_classes: int, ignore_value: int = IGNORE_INDEX, size: int = 256, reduce_zero_label: bool = False
) -> np.ndarray:
    """Lookup table for masks that already hold train ids: 0..C-1 -> themselves, ignore -> 255, rest invalid.

    With `reduce_zero_label` (ADE20K's convention, mmseg's flag): 0 means "unlabelled" -> 255 and 1..C -> 0..C-1.
    """
    lut = np.full(max(size, ignore_value + 1, num_classes + 1), -1, dtype=np.int64)
    first = 1 if reduce_zero_label else 0
    lut[first : first + num_classes] = np.arange(num_classes)
    if reduce_zero_label:
        lut[0] = IGNORE_INDEX
    lut[ignore_value] = IGNORE_INDEX
    return lut


def check_label_map(label_map: Mapping[int, int] | None, num_classes: int, size: int = 65536) -> dict[int, int]:
    """``label_map`` ({mask value as stored: class index or 255}) as a plain dict, or `DataError` naming the entry
    that is not one (a key outside 0..size-1, a value neither a class index nor 255)."""
    out: dict[int, int] = {}
    for key, value in (label_map or {}).items():
        try:
            k, v = int(key), int(value)
        except (TypeError, ValueError):
            raise DataError(
                f"label_map {{{key!r}: {value!r}}}: expected integers, {{mask value: class index}}"
            ) from None
        if not 0 <= k < size:
            raise DataError(f"label_map {{{k}: {v}}}: mask value {k} is outside the masks' range 0..{size - 1}")
        if not (0 <= v < num_classes or v == IGNORE_INDEX):
            raise DataError(
                f"label_map {{{k}: {v}}}: {v} is neither a class index (0..{num_classes - 1}) nor 255 (ignore)"
            )
        out[k] = v
    return out


def _pack(r: int, g: int, b: int) -> int:
    return (r << 16) | (g << 8) | b


def map_color_mask(
    raw: np.ndarray, palette: Palette, path: Path | str = "<mask>", ignore_colors: Sequence[tuple[int, int, int]] = ()
) -> np.ndarray:
    """RGB colour mask -> uint8 train ids: palette colour k -> k, ``ignore_colors`` -> 255.

    Any other colour raises `DataError` naming the file, the colours and their pixel counts: silently ignoring
    them would drop labels (a typo in the palette, an anti-aliased or JPEG-damaged mask) without a trace.
    """
    code = (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]
    out = np.full(code.shape, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(code.shape, dtype=bool)
    for k, rgb in enumerate(palette):
        hit = code == _pack(*rgb)
        out[hit] = k
        known |= hit
    for rgb in ignore_colors:
        known |= code == _pack(*rgb)
    if not known.all():
        values, counts = np.unique(code[~known], return_counts=True)
        order = np.argsort(-counts)[:8]
        listed = ", ".join(
            f"({v >> 16}, {(v >> 8) & 255}, {v & 255}): {c} px" for v, c in zip(values[order], counts[order])
        )
        more = f", ... ({len(values)} colours)" if len(values) > len(order) else ""
        raise DataError(
            f"{path}: {int(counts.sum())} pixels ({counts.sum() / code.size:.2%}) have colours that are not in the "
            f"palette: {listed}{more}. Add each colour that is a class to the palette, list colours that mean "
            '"ignore" under "ignore_colors" in classes.json, or repaint them (many near-palette colours mean an '
            "anti-aliased or lossy-compressed mask: re-export it from the original labels)."
        )
    return out


def default_palette(num_classes: int) -> Palette:
    """A deterministic, well-spread palette (the PASCAL VOC bit-interleaving scheme)."""
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k + 1  # skip black for class 0 so it is visible against padding
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def _check_sizes(img_path: Path, image_shape: tuple[int, ...], mask_path: Path, mask_shape: tuple[int, ...]) -> None:
    if image_shape[:2] != mask_shape[:2]:
        raise DataError(
            f"{mask_path}: mask size {mask_shape[0]}x{mask_shape[1]} (HxW) does not match image "
            f"{img_path} size {image_shape[0]}x{image_shape[1]}"
        )


class SegDataset(Dataset):
    """Base class: a list of (image, mask) files, classes, palette, and a `decode_mask` per layout.

    Subclasses set `self.classes`, `self.palette` and `self.samples`, and implement `decode_mask`.

    Args:
        transform: an albumentations pipeline called as ``transform(image=..., mask=...)``; None gives the
            raw numpy contract.
        strict: raise on layout problems (image without mask, empty split). With False they are collected in
            `self.problems` instead (used by ``python -m seg.data.check``).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, transform: Callable[..., dict[str, Any]] | None = None, strict: bool = True) -> None:
        self.transform = transform
        self.strict = strict
        self.problems: list[str] = []
        self.samples: list[tuple[Path, Path]] = []
        self.classes: list[str] = []
        self.palette: Palette = []
        self.cache: FileCache | None = None
        self._lut = np.zeros(0, np.int64)  # stored mask value -> train id (255 ignore) or -1 (invalid); per layout
        self.label_map: dict[int, int] = {}

    def set_cache(self, cache_dir: str | Path | None) -> None:
        """Keep decoded images and masks in `cache_dir` (see `seg.data.cache`); None turns caching off."""
        self.cache = FileCache(cache_dir) if cache_dir is not None else None

    def set_label_map(self, label_map: Mapping[int, int] | None) -> None:
        """What stored mask values mean, overriding the layout's rule: ``{value as stored: class index or 255}``
        (mmseg's ``label_map``; e.g. ``{255: 1}`` for binary masks exported as 0/255). It changes the lookup table
        `decode_mask` maps through, so training, evaluation, ``seg.data.check`` and the decode cache (which keeps
        masks as stored) all see the mapped labels."""
        self.label_map = check_label_map(label_map, self.num_classes, len(self._lut))
        for value, train_id in self.label_map.items():
            self._lut[value] = train_id

    def ignore_values(self) -> list[int]:
        """The stored mask values that mean ignore (for messages that suggest a `label_map`)."""
        return [int(v) for v in np.flatnonzero(self._lut == IGNORE_INDEX)]

    # -- listing helpers -------------------------------------------------------------------------------
    def _problem(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.problems.append(message)

    def _pair(self, images: Sequence[Path], mask_for: Callable[[Path], Path], what: str) -> None:
        """Pair every image with its mask; images without a mask are problems (all listed at once)."""
        missing = []
        for img in images:
            mask = mask_for(img)
            if mask.is_file():
                self.samples.append((img, mask))
            else:
                missing.append(f"{img} has no mask (expected {mask})")
        if missing:
            head = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
            for m in missing if not self.strict else [head]:
                self._problem(f"{what}: image without mask: {m}")
        if not images:
            self._problem(f"{what}: empty split (no images found)")

    # -- decoding ----------------------------------------------------------------------------------------
    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask array (as stored) -> HxW uint8 train ids with 255 ignore. Raises `DataError`."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode and check sample `index`: (HxWx3 uint8 RGB image, HxW uint8 train-id mask, 255 ignore)."""
        img_path, mask_path = self.samples[index]
        image = read_image(img_path) if self.cache is None else self.cache.get(img_path, read_image)
        mask = self.load_mask(index)
        _check_sizes(img_path, image.shape, mask_path, mask.shape)
        return image, mask

    def load_mask(self, index: int) -> np.ndarray:
        """The HxW uint8 train-id mask of sample `index` (255 ignore), without decoding its image."""
        mask_path = self.samples[index][1]
        raw = read_mask(mask_path) if self.cache is None else self.cache.get(mask_path, read_mask)
        return self.decode_mask(raw, mask_path)

    def _row_reader(self) -> RowReader | None:
        """The transform if it can read a sample from row sources (`seg.data.rows.RowReader`: the training
        recipe), else None. Not with a cache (its entries are whole images already)."""
        return self.transform if self.cache is None and isinstance(self.transform, RowReader) else None

    def _transform_reading_rows(self, index: int) -> dict[str, Any] | None:
        """`transform(image=..., mask=...)` of sample `index`, decoding the PNGs only down to the rows the
        transform reads (`seg.data.png.PngRows`; ~0.7 of them for the Cityscapes recipe's crops). Same random
        draws and the same result as decoding everything; the mask's values are mapped and checked
        (`decode_mask`) on the rows read, which include every pixel trained on. None where this does not apply:
        decode all."""
        reader = self._row_reader()
        if reader is None:
            return None
        img_path, mask_path = self.samples[index]
        try:
            image = png.open_rows(img_path.read_bytes(), "RGB")
            rows = png.open_rows(mask_path.read_bytes(), "mask") if image is not None else None
        except OSError:
            return None  # load() reports the file
        if image is None:
            return None
        if rows is not None and len(rows.shape) == 2:  # index masks: decoded and checked as far as read
            mask: MappedRows | np.ndarray = MappedRows(rows, self.decode_mask, mask_path)
        else:  # colour masks are checked whole (e.g. "grey saved as RGB" is a property of the whole file)
            mask = self.decode_mask(read_mask(mask_path), mask_path)
        _check_sizes(img_path, image.shape, mask_path, mask.shape)
        try:
            return reader.call_reading_rows(image, mask)
        except png.DecodeError:  # damaged past the checked chunks: the reader's draws were rolled back, so the
            return None  # usual decode (which reports the damage) repeats them

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = str(self.samples[index][0])
        out = self._transform_reading_rows(index) if self.transform is not None else None
        if out is None:
            image, mask = self.load(index)
            if self.transform is None:
                return {"image": image, "mask": mask.astype(np.int64), "path": path}
            out = self.transform(image=image, mask=mask)  # uint8 masks: what OpenCV resizes fastest
        img, m = out["image"], out["mask"]
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
        if isinstance(m, np.ndarray):
            m = torch.from_numpy(np.ascontiguousarray(m))
        return {"image": img.float(), "mask": m.long(), "path": path}

    def reseed(self, seed: int | None) -> None:
        """Give the transform a fresh random state (called per training sample and per worker, see
        `seg.data.seeding`)."""
        reseed_transform(self.transform, seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={self.num_classes})"
