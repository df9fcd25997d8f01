"""seg.data: datasets (Cityscapes, ADE20K, folders of images + masks), the mmseg augmentation recipe,
SegDataModule, its samplers and seeding (one data seed for order and augmentation), synthetic demo data."""

from .ade20k import ADE20KDataset
from .base import IGNORE_INDEX, DataError, SegDataset
from .cityscapes import CityscapesDataset
from .datamodule import SegDataModule, collate
from .folder import FolderDataset
from .samplers import EpochSampler, UnpaddedDistributedSampler
from .seeding import SeededDataset, seed_worker
from .synthetic import ensure_demo_data
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform

__all__ = [
    "ADE20KDataset",
    "CityscapesDataset",
    "DataError",
    "EpochSampler",
    "FolderDataset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SegDataModule",
    "SegDataset",
    "SeededDataset",
    "UnpaddedDistributedSampler",
    "build_eval_transform",
    "build_train_transform",
    "collate",
    "ensure_demo_data",
    "seed_worker",
]
