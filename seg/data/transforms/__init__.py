"""The albumentations steps of the mmseg recipe (`geometric`, `photometric`) and the pipelines built from them
(`recipe`)."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before any submodule imports albumentations: no PyPI check

from .geometric import (  # noqa: E402
    CatMaxRandomCrop,
    EvalResize,
    RandomRescale,
    RandomRescaleCrop,
    nearest_index,
    resize_region,
    rows_needed,
)
from .photometric import PhotoMetricDistortion  # noqa: E402
from .recipe import (  # noqa: E402
    ADE20K_SCALE,
    CITYSCAPES_CROP,
    CITYSCAPES_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizeToTensor,
    TrainPipeline,
    build_eval_transform,
    build_train_transform,
)

__all__ = [
    "ADE20K_SCALE",
    "CITYSCAPES_CROP",
    "CITYSCAPES_SCALE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CatMaxRandomCrop",
    "EvalResize",
    "NormalizeToTensor",
    "PhotoMetricDistortion",
    "RandomRescale",
    "RandomRescaleCrop",
    "TrainPipeline",
    "build_eval_transform",
    "build_train_transform",
    "nearest_index",
    "resize_region",
    "rows_needed",
]
