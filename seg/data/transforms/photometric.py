"""mmseg's photometric distortion (brightness, contrast, saturation, hue) on uint8 RGB, as lookup tables."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: float32 img * alpha + beta, clipped, truncated to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


_IDENTITY = np.arange(256, dtype=np.uint8)


def _per_channel(*luts: np.ndarray) -> np.ndarray:
    """One 256-entry table per channel, in the (1, 256, C) layout cv2.LUT takes."""
    return np.ascontiguousarray(np.stack(luts, -1)[None])


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB: each step applied with probability 1/2, in this order:

    brightness (+delta), contrast (*alpha) either here or last, saturation (*alpha in HSV), hue (+delta in HSV,
    OpenCV's 0-179 hue), contrast (if not done before). Values are clipped to 0-255 after each step.

    Draws as mmseg 1.2.2: brightness delta uniform in [-brightness_delta, brightness_delta), contrast and
    saturation factors uniform in their ranges, hue shift an integer in [-hue_delta, hue_delta) (numpy's
    exclusive ``randint`` upper bound; hue_delta=0 means no shift, where mmseg would raise).

    Every per-value step is a uint8 -> uint8 function, so it runs as a 256-entry lookup table built with the
    float formula itself (bit-identical, ~2x faster); consecutive ones (brightness, contrast) are composed
    into one table. The HSV round trips stay where mmseg has them (saturation and hue convert separately).
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
            "beta": r.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            "contrast_first": coin(),
            "contrast": r.uniform(*self.contrast_range) if coin() else None,
            "saturation": r.uniform(*self.saturation_range) if coin() else None,
            "hue": (r.randrange(-self.hue_delta, self.hue_delta) if self.hue_delta > 0 else 0) if coin() else None,
        }

    _convert = staticmethod(_convert)

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
            raise TypeError(f"PhotoMetricDistortion expects uint8 images (put it before Normalize), got {img.dtype}")
        lut = _IDENTITY if beta is None else _convert(_IDENTITY, beta=beta)
        if contrast is not None and contrast_first:
            lut = _convert(lut, alpha=contrast)
        if lut is not _IDENTITY:
            img = cv2.LUT(img, lut)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv = cv2.LUT(hsv, _per_channel(_IDENTITY, _convert(_IDENTITY, alpha=saturation), _IDENTITY))
                if hue is not None:  # mmseg converts back and forth between the two steps
                    hsv = cv2.cvtColor(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), cv2.COLOR_RGB2HSV)
            if hue is not None:
                hue_lut = ((_IDENTITY.astype(np.int32) + hue) % 180).astype(np.uint8)
                hsv = cv2.LUT(hsv, _per_channel(hue_lut, _IDENTITY, _IDENTITY))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = cv2.LUT(img, _convert(_IDENTITY, alpha=contrast))
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")
