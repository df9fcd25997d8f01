"""The mmseg training recipe in albumentations 2.0: rescale, cat-max crop, flip, photometric distortion.

Train pipeline (mmsegmentation ``configs/_base_/datasets/cityscapes.py`` / ``ade20k.py``)::

    RandomRescale(scale, ratio 0.5-2.0, keep ratio)       image bilinear, mask nearest
    CatMaxRandomCrop(crop_size, cat_max_ratio=0.75)       re-sample up to 10x while one class dominates
    HorizontalFlip(p=0.5)
    PhotoMetricDistortion()                               brightness, contrast, saturation, hue (uint8)
    Normalize(mean, std)                                  mean/std in 0-255 RGB
    PadIfNeeded(crop_size, top-left)                      image fill 0 (after Normalize, as mmseg), mask 255

`build_train_transform` runs the first two as one step, `RandomRescaleCrop`, which resamples only the pixels
the crop keeps (the rescaled image is up to 4x the source; the crop a fraction of it). Photometric distortion
uses uint8 lookup tables (bit-identical to the float arithmetic), and `NormalizeToTensor` writes the
normalised, padded (3, H, W) tensor in one pass.

All randomness comes from the transforms' own generators (`self.py_random`, `self.random_generator`), so
`Compose.set_random_state` reseeds everything (see `seg.data.seeding`).

Sizes are (H, W): the crop, e.g. (512, 1024), and the scale, e.g. (1024, 2048) for Cityscapes (mmseg writes
the scale as (W, H): ``scale=(2048, 1024)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..base import IGNORE_INDEX
from ..rows import RowSource
from ..seeding import reseed_transform
from .geometric import EvalResize, RandomRescaleCrop
from .photometric import PhotoMetricDistortion

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# mmseg's recipes, (H, W): the Cityscapes training crop and scale (mmseg: crop_size=(512, 1024),
# scale=(2048, 1024)), the ADE20K scale (scale=(2048, 512)). The one place seg.data writes them down: the
# pipelines below, SegDataModule and `python -m seg.data.bench` default to them.
CITYSCAPES_CROP = (512, 1024)
CITYSCAPES_SCALE = (1024, 2048)
ADE20K_SCALE = (512, 2048)


class NormalizeToTensor(A.DualTransform):
    """Normalise, pad and lay out in one pass: uint8 HxWx3 -> float32 (3, H', W') torch tensor.

    ``(img - mean) / std`` per channel (0-255 RGB), written straight into channel-first memory; H' x W' is the
    image size grown to at least `pad_size` (H, W), padded bottom/right with 0 (the mean colour, where mmseg
    pads) and the mask with `fill_mask`. Equivalent to albumentations Normalize + PadIfNeeded + a transpose,
    in ~1/4 of their time.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pad_size: tuple[int, int] = (0, 0),
        fill_mask: int = IGNORE_INDEX,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.pad_size = (int(pad_size[0]), int(pad_size[1]))
        self.fill_mask = int(fill_mask)

    def _padded(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return max(shape[0], self.pad_size[0]), max(shape[1], self.pad_size[1])

    def apply(self, img: np.ndarray, **params: Any) -> torch.Tensor:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"NormalizeToTensor expects an HxWx3 image, got shape {img.shape}")
        h, w = img.shape[:2]
        ph, pw = self._padded(img.shape)
        out = torch.zeros((3, ph, pw)) if (ph, pw) != (h, w) else torch.empty((3, h, w))
        planes = out.numpy()
        for c, plane in enumerate(cv2.split(img)):
            dst = planes[c] if (ph, pw) == (h, w) else None  # written in place when contiguous
            scaled = cv2.addWeighted(
                plane, 1.0 / self.std[c], plane, 0.0, -self.mean[c] / self.std[c], dst=dst, dtype=cv2.CV_32F
            )  # plane / std - mean / std, float32
            if dst is None or not np.shares_memory(scaled, dst):
                planes[c, :h, :w] = scaled
        return out

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        ph, pw = self._padded(mask.shape)
        if (ph, pw) == mask.shape[:2]:
            return mask
        out = np.full((ph, pw, *mask.shape[2:]), self.fill_mask, dtype=mask.dtype)
        out[: mask.shape[0], : mask.shape[1]] = mask
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std", "pad_size", "fill_mask")


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    # mean/std are 0-255 RGB, so max_pixel_value=1 gives (img - mean) / std
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0)


class TrainPipeline(A.Compose):
    """The training recipe's `A.Compose`, which can also read a sample from row sources (`seg.data.rows.RowReader`):
    its first step, `RandomRescaleCrop`, then decodes image and mask only down to the rows the drawn crop needs."""

    def call_reading_rows(self, image: RowSource, mask: RowSource | np.ndarray) -> dict[str, Any] | None:
        """``self(image=..., mask=...)`` of the whole decoded arrays, reading `image` (and `mask`, when it is a row
        source) only as far as the crop reaches (`RandomRescaleCrop.reading`): the same draws, the same result.

        None unless the pipeline always runs and starts with an always-applied `RandomRescaleCrop` (as
        `build_train_transform` builds it). If a source raises (damaged data), the pipeline's generators are put
        back as they were before the call and the error propagates: calling the pipeline on the whole decoded
        arrays then repeats the same draws.
        """
        crop = self.transforms[0] if len(self.transforms) else None
        if self.p < 1 or not isinstance(crop, RandomRescaleCrop) or crop.p < 1:
            return None
        state = self.random_generator.bit_generator.state, self.py_random.getstate()
        try:
            with crop.reading(image, None if isinstance(mask, np.ndarray) else mask) as (image_in, mask_in):
                return self(image=image_in, mask=mask if mask_in is None else mask_in)
        except Exception:
            self.random_generator.bit_generator.state = state[0]
            self.py_random.setstate(state[1])
            raise


def build_train_transform(
    crop_size: tuple[int, int] = CITYSCAPES_CROP,
    scale: tuple[int, int] | None = CITYSCAPES_SCALE,
    scale_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
    normalize: bool = True,
    seed: int | None = None,
) -> TrainPipeline:
    """The mmseg training pipeline. crop_size is (H, W); scale is the (H, W) base of the random keep-ratio
    rescale (its ratio drawn from `scale_range`), or None for the image's own size.

    Steps: `RandomRescaleCrop`, HorizontalFlip, `PhotoMetricDistortion` (if `photometric`), then
    `NormalizeToTensor` (float32 (3, H, W) tensor, padded to the crop). normalize=False ends with uint8 HxWx3
    padded by albumentations PadIfNeeded instead (image 0, mask `ignore_index`; used by tests to check alignment).
    """
    crop_h, crop_w = crop_size
    steps: list[A.BasicTransform] = [
        RandomRescaleCrop(crop_h, crop_w, scale, scale_range, cat_max_ratio, ignore_index),
        A.HorizontalFlip(p=flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    if normalize:
        # after normalisation the image fill 0 is the mean colour (mmseg pads there too)
        steps.append(NormalizeToTensor(mean, std, pad_size=(crop_h, crop_w), fill_mask=ignore_index))
    else:
        steps.append(
            A.PadIfNeeded(
                min_height=crop_h,
                min_width=crop_w,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            )
        )
    pipeline = TrainPipeline(steps, strict=True)
    reseed_transform(pipeline, seed)
    return pipeline


def build_eval_transform(
    scale: tuple[int, int] | None = CITYSCAPES_SCALE,
    mode: str = "resize",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Validation/test: 'resize' rescales the *image* to fit `scale` (H, W) keeping the aspect ratio (mmseg's
    test pipeline; None keeps it); the mask always keeps its original size, where predictions are scored. 'full'
    feeds the image at its original resolution too."""
    if mode not in ("resize", "full"):
        raise ValueError(f"val_mode must be 'resize' or 'full', got {mode!r}")
    steps: list[A.BasicTransform] = []
    if mode == "resize" and scale is not None:
        steps.append(EvalResize(scale))
    steps.append(_normalize(mean, std))
    return A.Compose(steps, strict=True, seed=0)
