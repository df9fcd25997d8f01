"""The mmseg training recipe in albumentations 2.0: rescale, cat-max crop, flip, photometric distortion.

Train pipeline (mmsegmentation ``configs/_base_/datasets/cityscapes.py`` / ``ade20k.py``)::

    RandomRescale(base_size, ratio 0.5-2.0, keep ratio)   image bilinear, mask nearest
    CatMaxRandomCrop(crop_size, cat_max_ratio=0.75)       re-sample up to 10x while one class dominates
    HorizontalFlip(p=0.5)
    PhotoMetricDistortion()                               brightness, contrast, saturation, hue (uint8)
    Normalize(mean, std)                                  mean/std in 0-255 RGB
    PadIfNeeded(crop_size, top-left)                      image fill 0 (after Normalize, as mmseg), mask 255

Only the recipe's three custom steps are written here; the rest are stock albumentations. All randomness comes
from the transform's own generators (`self.py_random`, `self.random_generator`), so `Compose.set_random_state`
reseeds everything (see `SegDataModule` worker_init_fn).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # no PyPI version check at import (offline machines)

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from seg.deploy.geometry import rescale_size  # noqa: E402,F401  (shared with the ONNX path; importable here too)

from .base import IGNORE_INDEX  # noqa: E402

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class RandomRescale(A.DualTransform):
    """Resize by a random ratio of a base size, keeping the aspect ratio (mmseg ``RandomResize(keep_ratio=True)``).

    Args:
        base_size: (W, H) base scale, e.g. (2048, 1024) for Cityscapes, or None to scale relative to the input's
            own size.
        ratio_range: the ratio is drawn uniformly from this range; (1, 1) is a deterministic resize.
        interpolation: OpenCV flag for the image; masks always use nearest.
    """

    def __init__(
        self,
        base_size: tuple[int, int] | None = (2048, 1024),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f'ratio_range must satisfy 0 < low <= high, got {ratio_range}')
        self.base_size = tuple(base_size) if base_size is not None else None
        self.ratio_range = tuple(ratio_range)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params['shape'][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        if self.base_size is None:
            size = max(1, int(width * ratio + 0.5)), max(1, int(height * ratio + 0.5))
        else:
            scale = int(self.base_size[0] * ratio), int(self.base_size[1] * ratio)
            size = rescale_size(width, height, scale)
        return {'size': size}

    def apply(self, img: np.ndarray, size: tuple[int, int] = (1, 1), **params: Any) -> np.ndarray:
        if (img.shape[1], img.shape[0]) == size:
            return img
        return cv2.resize(img, size, interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int] = (1, 1), **params: Any) -> np.ndarray:
        if (mask.shape[1], mask.shape[0]) == size:
            return mask
        return cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ('base_size', 'ratio_range', 'interpolation')


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
            raise ValueError(f'crop size must be positive, got {(height, width)}')
        self.height, self.width = int(height), int(width)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = int(max_tries)

    def _draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        y = self.py_random.randint(0, max(height - self.height, 0))
        x = self.py_random.randint(0, max(width - self.width, 0))
        return x, y, min(x + self.width, width), min(y + self.height, height)

    def _dominated(self, mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
        x1, y1, x2, y2 = box
        counts = np.bincount(mask[y1:y2, x1:x2].ravel(), minlength=256)
        if self.ignore_index < len(counts):
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return not (len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params['shape'][:2]
        box = self._draw(height, width)
        mask = data.get('mask')
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if not self._dominated(mask, box):
                    break
                box = self._draw(height, width)
        return {'box': box}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 1, 1), **params: Any) -> np.ndarray:
        x1, y1, x2, y2 = box
        return np.ascontiguousarray(img[y1:y2, x1:x2])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int] = (0, 0, 1, 1), **params: Any) -> np.ndarray:
        return self.apply(mask, box=box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ('height', 'width', 'cat_max_ratio', 'ignore_index', 'max_tries')


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB: each step applied with probability 1/2, in this order:

    brightness (+delta), contrast (*alpha) either here or last, saturation (*alpha in HSV), hue (+delta in HSV,
    OpenCV's 0-179 hue), contrast (if not done before). Values are clipped to 0-255 after each step.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        coin = lambda: r.random() < 0.5  # noqa: E731
        return {
            'beta': r.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            'contrast_first': coin(),
            'contrast': r.uniform(*self.contrast_range) if coin() else None,
            'saturation': r.uniform(*self.saturation_range) if coin() else None,
            'hue': r.randint(-self.hue_delta, self.hue_delta) if coin() else None,
        }

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(
        self,
        img: np.ndarray,
        beta: float | None = None,
        contrast_first: bool = True,
        contrast: float | None = None,
        saturation: float | None = None,
        hue: int | None = None,
        **params: Any,
    ) -> np.ndarray:
        if img.dtype != np.uint8:
            raise TypeError(f'PhotoMetricDistortion expects uint8 images (put it before Normalize), got {img.dtype}')
        if beta is not None:
            img = self._convert(img, beta=beta)
        if contrast is not None and contrast_first:
            img = self._convert(img, alpha=contrast)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=saturation)
                if hue is not None:  # mmseg converts back and forth between the two steps
                    hsv = cv2.cvtColor(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), cv2.COLOR_RGB2HSV)
            if hue is not None:
                hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + hue) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = self._convert(img, alpha=contrast)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ('brightness_delta', 'contrast_range', 'saturation_range', 'hue_delta')


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    # mean/std are 0-255 RGB, so max_pixel_value=1 gives (img - mean) / std
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0)


def build_train_transform(
    crop_size: tuple[int, int] = (512, 1024),
    base_size: tuple[int, int] | None = (2048, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
    normalize: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """The mmseg training pipeline. crop_size is (H, W); base_size is (W, H) (mmseg order) or None.

    normalize=False stops before Normalize/pad (uint8 output; used by tests to check alignment).
    """
    crop_h, crop_w = crop_size
    steps: list[A.BasicTransform] = [
        RandomRescale(base_size, scale_range),
        CatMaxRandomCrop(crop_h, crop_w, cat_max_ratio, ignore_index),
        A.HorizontalFlip(p=flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    if normalize:
        steps.append(_normalize(mean, std))
    # bottom/right padding; after Normalize the image fill 0 is the mean colour (mmseg pads there too)
    steps.append(
        A.PadIfNeeded(
            min_height=crop_h, min_width=crop_w, position='top_left',
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index,
        )
    )
    pipeline = A.Compose(steps, strict=True)
    reseed(pipeline, seed)
    return pipeline


def build_eval_transform(
    base_size: tuple[int, int] | None = (2048, 1024),
    mode: str = 'resize',
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Validation/test: 'resize' rescales image and mask (nearest) to fit base_size (W, H) keeping the aspect
    ratio, as mmseg's test pipeline does for the image; 'full' keeps the original resolution (exact labels)."""
    if mode not in ('resize', 'full'):
        raise ValueError(f"val_mode must be 'resize' or 'full', got {mode!r}")
    steps: list[A.BasicTransform] = []
    if mode == 'resize' and base_size is not None:
        steps.append(RandomRescale(base_size, (1.0, 1.0)))
    steps.append(_normalize(mean, std))
    return A.Compose(steps, strict=True, seed=0)


def reseed(transform: Any, seed: int | None) -> None:
    """One shared numpy + python generator for the whole pipeline, seeded with `seed`.

    (`Compose.set_random_seed` would give every step its own generator with the *same* seed, which
    correlates the steps' decisions.) None draws fresh OS entropy.
    """
    import random

    if transform is not None and hasattr(transform, 'set_random_state'):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
