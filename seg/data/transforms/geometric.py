"""Geometric steps of the mmseg recipe: keep-ratio random rescale, cat-max random crop, the two fused into one
step that resamples only the crop, and the evaluation resize.

The image is resampled bilinearly, the mask with nearest neighbour. `RandomRescaleCrop` (the training recipe's
first step, see `seg.data.transforms.recipe`) gives the mask exactly the pixels that rescale-then-crop gives,
the image the same bilinear samples up to OpenCV's fixed-point rounding (at most 1 grey level apart), and can
crop from images decoded from the top only as far as the crop needs (`RandomRescaleCrop.reading`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import albumentations as A
import cv2
import numpy as np

from seg.deploy.geometry import rescale_size

from ..base import IGNORE_INDEX
from ..rows import RowSource


def _check_ratio_range(ratio_range: tuple[float, float]) -> tuple[float, float]:
    if not 0 < ratio_range[0] <= ratio_range[1]:
        raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}")
    return float(ratio_range[0]), float(ratio_range[1])


def _check_scale(scale: tuple[int, int] | None) -> tuple[int, int] | None:
    if scale is not None and (len(scale) != 2 or min(scale) <= 0):
        raise ValueError(f"scale must be (H, W), both > 0, or None; got {scale}")
    return tuple(scale) if scale is not None else None


def _scaled_size(height: int, width: int, ratio: float, scale: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) after mmseg's RandomResize by `ratio` of `scale` (H, W) (None: of the input's own size)."""
    if scale is None:
        return max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))
    return rescale_size(height, width, (int(scale[0] * ratio), int(scale[1] * ratio)))


def _dominated(region: np.ndarray, ignore_index: int, cat_max_ratio: float) -> bool:
    """True unless the region holds >= 2 non-ignore classes and the largest covers < cat_max_ratio of them."""
    if region.dtype == np.uint8 and region.size:  # calcHist: ~4x faster than bincount for the common masks
        counts = cv2.calcHist([np.ascontiguousarray(region)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        counts = np.bincount(region.ravel(), minlength=256)
    if 0 <= ignore_index < len(counts):
        counts[ignore_index] = 0
    counts = counts[counts > 0]
    return not (len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio)


def nearest_index(src_len: int, dst_len: int, start: int, stop: int) -> np.ndarray:
    """Source indices of destination pixels start..stop-1 when OpenCV resizes src_len -> dst_len with
    INTER_NEAREST (``floor(x * (1 / (dst / src)))`` in double precision, clamped), so a gather with them
    equals ``cv2.resize(..., INTER_NEAREST)[start:stop]`` exactly."""
    inv = 1.0 / (dst_len / src_len)
    return np.minimum(np.floor(np.arange(start, stop, dtype=np.float64) * inv), src_len - 1).astype(np.intp)


def rows_needed(src_height: int, height: int, box: tuple[int, int, int, int], interpolation: int) -> int:
    """How many source rows from the top `resize_region(img, (height, .), box, interpolation)` reads, for an
    image `src_height` rows high: up to the sample position of the box's last row plus the interpolation
    kernel's reach, with a margin for warpAffine's fixed-point rounding. Every row for other modes."""
    y2 = box[3]
    if height == src_height:
        return min(src_height, y2)
    if interpolation == cv2.INTER_NEAREST:
        return int(nearest_index(src_height, height, y2 - 1, y2)[0]) + 1
    if interpolation not in (cv2.INTER_LINEAR, cv2.INTER_CUBIC):
        return src_height
    last = (y2 - 1 + 0.5) * (src_height / height) - 0.5
    reach = 2 if interpolation == cv2.INTER_LINEAR else 3  # the rows floor(y)..floor(y)+1 (+2 for cubic)
    return min(src_height, max(0, int(np.floor(last))) + reach + 2)


def resize_region(
    img: np.ndarray,
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    interpolation: int = cv2.INTER_LINEAR,
    src_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """``cv2.resize(img, (W, H), interpolation)[y1:y2, x1:x2]`` for `size` (H, W) and box (x1, y1, x2, y2),
    computing only the box.

    Nearest: exact (see `nearest_index`). Linear/cubic: the same sample positions (pixel centres,
    ``(x + 0.5) * scale - 0.5``, edges replicated as resize clamps) through `cv2.warpAffine`, whose 1/32-pixel
    fixed-point coordinates differ from resize's by at most one grey level on natural images. Other modes
    (e.g. INTER_AREA) resize the whole image and crop.

    src_size: (H, W) of the whole source when `img` holds only its top rows (at least `rows_needed` of them):
    the result is the same as from the whole image.
    """
    x1, y1, x2, y2 = box
    src_h, src_w = src_size if src_size is not None else img.shape[:2]
    if src_h != img.shape[0] and img.shape[0] < rows_needed(src_h, size[0], box, interpolation):
        raise ValueError(
            f"resize_region: {img.shape[0]} of {src_h} rows given, "
            f"{rows_needed(src_h, size[0], box, interpolation)} needed"
        )
    height, width = size
    if (height, width) == (src_h, src_w):
        return np.ascontiguousarray(img[y1:y2, x1:x2])
    if interpolation == cv2.INTER_NEAREST:
        rows = img.take(nearest_index(src_h, height, y1, y2), axis=0)
        return rows.take(nearest_index(src_w, width, x1, x2), axis=1)
    if interpolation not in (cv2.INTER_LINEAR, cv2.INTER_CUBIC) or img.ndim > 2 and img.shape[2] > 4:
        return np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=interpolation)[y1:y2, x1:x2])
    sx, sy = src_w / width, src_h / height
    inverse = np.array([[sx, 0.0, (x1 + 0.5) * sx - 0.5], [0.0, sy, (y1 + 0.5) * sy - 0.5]])  # dst -> src
    out = cv2.warpAffine(
        img, inverse, (x2 - x1, y2 - y1), flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    return out.reshape(y2 - y1, x2 - x1, *img.shape[2:])  # warpAffine drops a trailing channel axis of 1


class RandomRescale(A.DualTransform):
    """Resize by a random ratio of a base size, keeping the aspect ratio (mmseg ``RandomResize(keep_ratio=True)``).

    Args:
        scale: (H, W) base scale, e.g. (1024, 2048) for Cityscapes (a keep-ratio bound: long edge <= max, short
            edge <= min, times the ratio), or None to scale relative to the input's own size.
        ratio_range: the ratio is drawn uniformly from this range; (1, 1) is a deterministic resize.
        interpolation: OpenCV flag for the image; masks always use nearest.
    """

    def __init__(
        self,
        scale: tuple[int, int] | None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.scale = _check_scale(scale)
        self.ratio_range = _check_ratio_range(ratio_range)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        return {"size": _scaled_size(height, width, self.py_random.uniform(*self.ratio_range), self.scale)}

    def apply(self, img: np.ndarray, size: tuple[int, int] = (1, 1), **params: Any) -> np.ndarray:
        if img.shape[:2] == size:  # size: (H, W)
            return img
        return cv2.resize(img, size[::-1], interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int] = (1, 1), **params: Any) -> np.ndarray:
        if mask.shape[:2] == size:
            return mask
        return cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range", "interpolation")


class CatMaxRandomCrop(A.DualTransform):
    """Random crop that re-samples while one class covers more than `cat_max_ratio` of it (mmseg ``RandomCrop``).

    Inputs smaller than the crop are cropped to their own size along that axis (pad afterwards). A crop is
    accepted when it holds at least two non-ignore classes and the largest covers < `cat_max_ratio` of the
    non-ignore pixels; otherwise a new one is drawn, at most `max_tries` times (the last draw is kept).

    Args:
        height, width: crop size.
        cat_max_ratio: 1.0 disables the re-sampling.
        ignore_index: mask value not counted.
        max_tries: number of re-samples (mmseg uses 10).
    """

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if height < 1 or width < 1:
            raise ValueError(f"crop size must be positive, got {(height, width)}")
        self.height, self.width = int(height), int(width)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = int(max_tries)

    def _draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        # randint is inclusive: offsets 0..margin, as mmseg's np.random.randint(0, margin + 1)
        y = self.py_random.randint(0, max(height - self.height, 0))
        x = self.py_random.randint(0, max(width - self.width, 0))
        return x, y, min(x + self.width, width), min(y + self.height, height)

    def _draw_box(
        self, height: int, width: int, region: Callable[[tuple[int, int, int, int]], np.ndarray] | None
    ) -> tuple[int, int, int, int]:
        """Draw a box in an (height, width) image; `region(box)` gives the mask under it (None: no mask)."""
        box = self._draw(height, width)
        if region is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if not _dominated(region(box), self.ignore_index, self.cat_max_ratio):
                    break
                box = self._draw(height, width)
        return box

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        mask = data.get("mask")
        region = None if mask is None else (lambda b: mask[b[1] : b[3], b[0] : b[2]])
        return {"box": self._draw_box(height, width, region)}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 1, 1), **params: Any) -> np.ndarray:
        x1, y1, x2, y2 = box
        return np.ascontiguousarray(img[y1:y2, x1:x2])

    def apply_to_mask(
        self, mask: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 1, 1), **params: Any
    ) -> np.ndarray:
        return self.apply(mask, box=box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries")


class RandomRescaleCrop(CatMaxRandomCrop):
    """`RandomRescale` then `CatMaxRandomCrop` in one step that resamples only the crop.

    Same random draws in the same order as the two steps (ratio, then crop offsets and cat-max re-draws on the
    rescaled mask), so the same generator state gives the same crop. The mask under a candidate box is
    gathered with `nearest_index` (exactly the rescaled mask's pixels); the image region is produced by
    `resize_region`. At ratio 2 on a 1024x2048 image this writes 16x fewer pixels than resizing everything.
    Its params: ``size`` (H, W) of the rescaled image, ``box`` (x1, y1, x2, y2) of the crop in it.

    Args:
        height, width: crop size.
        scale, ratio_range, interpolation: as `RandomRescale`.
        cat_max_ratio, ignore_index, max_tries: as `CatMaxRandomCrop`.
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale: tuple[int, int] | None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(height, width, cat_max_ratio, ignore_index, max_tries, p=p)
        self.scale = _check_scale(scale)
        self.ratio_range = _check_ratio_range(ratio_range)
        self.interpolation = interpolation
        self._source: Any = None

    @contextlib.contextmanager
    def reading(
        self, image: RowSource, mask: RowSource | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Crop from row sources (`seg.data.rows.RowSource`: images decoded from the top as far as asked, e.g.
        `seg.data.png.PngRows`), reading only the rows the drawn crop needs (and the candidate boxes the cat-max
        rule looks at, for the mask). Yields stand-ins of the image's (and mask's) shape to pass to the pipeline
        as ``image`` and ``mask`` (zeros, allocated lazily by the OS: never touched, they cost no time). The crop
        must be the pipeline's first step (`TrainPipeline.call_reading_rows` checks, `apply` too). Same draws
        and same result as passing the whole decoded arrays."""
        stand_ins = np.zeros(image.shape, np.uint8), None if mask is None else np.zeros(mask.shape, np.uint8)
        self._source = (image, mask), stand_ins
        try:
            yield stand_ins
        finally:
            self._source = None

    def _read(
        self, which: int, given: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int], interpolation: int
    ) -> np.ndarray:
        """`resize_region` of the image (which=0) or mask (1): of `given`, or of its source's top rows."""
        if self._source is None or self._source[0][which] is None:
            return resize_region(given, size, box, interpolation)
        source, stand_in = self._source[0][which], self._source[1][which]
        if given is not stand_in:
            raise RuntimeError("RandomRescaleCrop.reading: the crop must be the first step of the pipeline")
        src_h, src_w = source.shape[:2]
        top = source.rows(rows_needed(src_h, size[0], box, interpolation))
        return resize_region(top, size, box, interpolation, src_size=(src_h, src_w))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        src_h, src_w = params["shape"][:2]
        size = _scaled_size(src_h, src_w, self.py_random.uniform(*self.ratio_range), self.scale)  # (H, W)
        mask = data.get("mask")
        region = None if mask is None else (lambda b: self._read(1, mask, size, b, cv2.INTER_NEAREST))
        return {"size": size, "box": self._draw_box(size[0], size[1], region)}

    def apply(
        self,
        img: np.ndarray,
        size: tuple[int, int] = (1, 1),
        box: tuple[int, int, int, int] = (0, 0, 1, 1),
        **params: Any,
    ) -> np.ndarray:
        return self._read(0, img, size, box, self.interpolation)

    def apply_to_mask(
        self,
        mask: np.ndarray,
        size: tuple[int, int] = (1, 1),
        box: tuple[int, int, int, int] = (0, 0, 1, 1),
        **params: Any,
    ) -> np.ndarray:
        return self._read(1, mask, size, box, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (
            "height",
            "width",
            "scale",
            "ratio_range",
            "cat_max_ratio",
            "ignore_index",
            "max_tries",
            "interpolation",
        )


class EvalResize(A.ImageOnlyTransform):
    """Resize the image only, keeping its aspect ratio, to fit the test scale (mmseg test pipeline
    ``Resize(scale, keep_ratio=True)`` placed before ``LoadAnnotations``): the mask keeps its original size,
    and predictions are resized back to it before scoring (:func:`seg.evaluation.predict_batch`).

    Args:
        scale: (H, W) test scale, e.g. (512, 2048) for ADE20K: long edge <= max, short edge <= min (mmcv
            ``rescale_size`` with a tuple).
        interpolation: OpenCV flag (bilinear, as mmcv ``imresize``).
    """

    def __init__(self, scale: tuple[int, int], interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = (int(scale[0]), int(scale[1]))
        self.interpolation = interpolation

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        size = rescale_size(img.shape[0], img.shape[1], self.scale)  # (H, W)
        if img.shape[:2] == size:
            return img
        return cv2.resize(img, size[::-1], interpolation=self.interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "interpolation")
