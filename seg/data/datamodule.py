"""SegDataModule: any seg dataset + the mmseg augmentation recipe, as a LightningDataModule.

Batches are dicts ``{'image': float32 (B, 3, H, W) normalised, 'mask': int64 (B, H', W'), 'path': list[str],
'img_shape': int64 (B, 2), 'ori_shape': int64 (B, 2)}`` (H', W' = H, W except at evaluation, see below).
Attributes for the model/visualisation side: `num_classes`, `classes`, `palette`, `ignore_index` (255),
`mean`, `std` (0-255 RGB, to de-normalise).

* Seeding: one data seed (``seed``, else ``seed_everything``'s) decides the training order of every epoch and
  the augmentation of every training sample (`seg.data.seeding`): the same seed gives the same batches with
  any ``num_workers``, in ``train.py`` and in a bare DataModule, and a resume can continue mid-epoch
  (`resume_train_at`, called by `seg.training.resume.ExactResume`). No loader draws from the global RNGs.
* Validation/test never pad or duplicate samples under DDP (`UnpaddedDistributedSampler`), so mIoU over all
  ranks equals the single-process value. Images of different sizes in one val batch are padded bottom/right
  (image 0, mask 255); the default val_batch_size=1 avoids padding altogether.
* Evaluation protocol (mmseg): with ``val_mode='resize'`` only the image is resized to fit the test scale; the
  mask keeps its original size, and the model resizes its logits back to it before scoring. Eval batches carry
  ``img_shape`` / ``ori_shape`` (B, 2) for that (see `collate`).
* Sizes are (H, W): ``crop_size`` and ``scale`` (the base of the random rescale and the test scale, mmseg's
  ``scale`` written the other way round). Checkpoints written before hold ``base_size`` (W, H) in their data
  settings: `upgrade_data_hparams` turns them into today's arguments.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .ade20k import ADE20KDataset
from .base import IGNORE_INDEX, DataError, SegDataset, check_label_map
from .cityscapes import CityscapesDataset
from .folder import FolderDataset, resolve_classes
from .labels import check_training_masks
from .samplers import EpochSampler, UnpaddedDistributedSampler
from .seeding import SeededDataset, loader_generator, resolve_data_seed, seed_worker
from .synthetic import prepare_demo_root
from .transforms import (
    ADE20K_SCALE,
    CITYSCAPES_CROP,
    CITYSCAPES_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
)

DatasetName = Literal["folder", "cityscapes", "ade20k"]

# data.scale when none is given, (H, W): mmseg's (the scale of its RandomResize and test Resize); folder data is
# rescaled relative to each image's own size and evaluated at it
DEFAULT_SCALES: dict[str, tuple[int, int] | None] = {
    "cityscapes": CITYSCAPES_SCALE,
    "ade20k": ADE20K_SCALE,
    "folder": None,
}


def _base_size_error(base_size: Any) -> DataError:
    try:
        scale = f"[{int(base_size[1])}, {int(base_size[0])}]"
    except (TypeError, ValueError, IndexError):
        scale = "[H, W]"
    return DataError(f"data.base_size (W, H) was replaced by data.scale (H, W): write data.scale: {scale}")


def upgrade_data_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """The data settings a checkpoint holds (its ``datamodule_hyper_parameters``) as today's `SegDataModule`
    arguments: checkpoints written before sizes were (H, W) everywhere hold ``base_size`` (W, H), which becomes
    ``scale`` (H, W). Returns a new dict; settings written since come back unchanged.
    """
    out = dict(hp)
    if "base_size" not in out:
        return out
    base_size = out.pop("base_size")
    if base_size is None:  # the dataset's default then, as `scale` None now
        return out
    if out.get("scale") is not None:
        raise ValueError(
            f"data settings hold both base_size {list(base_size)} (W, H) and scale {list(out['scale'])} (H, W): "
            "keep only scale"
        )
    if len(base_size) != 2:
        raise _base_size_error(base_size)
    out["scale"] = (int(base_size[1]), int(base_size[0]))  # (W, H) -> (H, W)
    return out


def test_scale_of(hp: dict[str, Any]) -> tuple[int, int] | None:
    """The (H, W) the evaluation transform fits each image into (keeping its aspect ratio) for the data settings
    ``hp`` (SegDataModule arguments): ``scale`` or the dataset's default with ``val_mode='resize'``; None when
    images are evaluated as they are (``val_mode='full'``, or folder data without a scale)."""
    if hp.get("val_mode", "resize") != "resize":
        return None
    scale = hp.get("scale") or DEFAULT_SCALES.get(hp.get("dataset", "folder"))
    return None if scale is None else (int(scale[0]), int(scale[1]))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; different sizes are padded bottom/right (image 0, mask 255).

    Images and masks are padded separately: at evaluation the image is resized to the test scale while the
    mask keeps the original size. ``img_shape`` and ``ori_shape`` (B, 2) int64 hold each sample's unpadded
    image and mask (H, W), what the model needs to crop the padding and resize its logits to the original.
    """
    img_shapes = [tuple(s["image"].shape[-2:]) for s in samples]
    ori_shapes = [tuple(s["mask"].shape[-2:]) for s in samples]
    h, w = max(s[0] for s in img_shapes), max(s[1] for s in img_shapes)
    mh, mw = max(s[0] for s in ori_shapes), max(s[1] for s in ori_shapes)
    images = samples[0]["image"].new_zeros((len(samples), 3, h, w))
    masks = torch.full((len(samples), mh, mw), IGNORE_INDEX, dtype=torch.int64)
    for i, s in enumerate(samples):
        (sh, sw), (oh, ow) = img_shapes[i], ori_shapes[i]
        images[i, :, :sh, :sw] = s["image"]
        masks[i, :oh, :ow] = s["mask"]
    return {
        "image": images,
        "mask": masks,
        "path": [s["path"] for s in samples],
        "img_shape": torch.tensor(img_shapes, dtype=torch.int64),
        "ori_shape": torch.tensor(ori_shapes, dtype=torch.int64),
    }


class SegDataModule(L.LightningDataModule):
    """Cityscapes, ADE20K or a folder of images + masks, with the mmseg training recipe.

    Args:
        dataset: 'folder' (``{root}/{split}/images|masks``), 'cityscapes' or 'ade20k'.
        root: dataset root (for ade20k the folder that holds ``ADEChallengeData2016``, or that folder itself).
        classes: class names for 'folder'; None reads ``{root}/classes.json``.
        palette: RGB triple per class for 'folder' colour masks (RGB mask PNGs are decoded with it).
        ignore_index: for 'folder', the mask value meaning ignore (emitted as 255).
        label_train_ids: cityscapes: read ``*_labelTrainIds.png`` instead of mapping ``*_labelIds.png``.
        train_split, val_split, test_split: split names (test defaults to val; ADE 'train'/'val' are aliases
            of 'training'/'validation').
        batch_size: training batch size (per device).
        val_batch_size: validation/test batch size (1 = no padding, mmseg's choice).
        num_workers: DataLoader workers (persistent when > 0). One worker delivers ~25-30 Cityscapes samples/s
            from PNG, ~100 from the decode cache (data/README.md, Throughput).
        prefetch_factor: batches each worker prepares ahead (with workers); 4 keeps the GPU fed through the
            slow samples (large scales, cat-max re-draws).
        crop_size: training crop (H, W).
        scale: (H, W) base of the random rescale and test scale (a keep-ratio bound: long edge <= max, short
            edge <= min); None = the dataset default (`DEFAULT_SCALES`: 1024x2048 Cityscapes, 512x2048 ADE20K,
            the image's own size for folder).
        scale_range: random rescale ratio range.
        cat_max_ratio: re-sample the crop while one class covers more than this (1.0 disables).
        flip_prob: horizontal flip probability.
        photometric: photometric distortion on/off.
        val_mode: 'resize' (the image is rescaled to fit `scale`, mmseg's test pipeline) or 'full' (the image
            at its original resolution). Either way the mask keeps its original size and is scored there.
        mean, std: normalisation, 0-255 RGB (ImageNet by default).
        seed: the data seed: the training order of each epoch and every training sample's augmentation are
            drawn from it (the same in any worker, with any num_workers). None = the seed of Lightning's
            ``seed_everything`` (train.py's ``--seed_everything``, read from PL_GLOBAL_SEED when the DataModule
            is built; 0 if it was never called). An explicit value wins.
        pin_memory: pin batches when CUDA is available (faster, asynchronous host-to-device copies).
        cache_dir: keep decoded images and masks there (`seg.data.cache`): decoding then costs a file read
            instead of a PNG decode, ~3-4x more samples/s per worker. Filled on first use, or ahead of time with
            ``python -m seg.data.cache``; needs raw-pixel disk space (~22 GB for Cityscapes train+val).
        generate_demo: write the synthetic demo data (`seg.data.synthetic`) first if absent, only at its own
            root: True = ``data/demo``, a path = that folder; any other `root` is used as is, and a missing one
            is an error (a typo'd `root` never receives demo data).
        base_size: removed; giving it raises a ValueError naming the `scale` to write instead.
        label_map: ``{mask value as stored: class index or 255}``, applied when masks are decoded (training,
            validation, ``seg.evaluate``; the decode cache keeps masks as stored), e.g. ``{255: 1}`` for binary
            masks exported as 0/255 with classes [background, lesion]. mmseg's ``label_map``.
        reduce_zero_label: 'folder': masks store 0 for "unlabelled" (-> 255) and class k as k + 1 (ADE20K's
            convention; mmseg's ``reduce_zero_label``, HF's ``do_reduce_labels``). ADE20K does this already.
        allow_missing_classes: train although a class has no pixel in the training masks read before the first
            step while ignore covers part of them (`seg.data.labels`: by default that refuses to start, as it is
            what 0/255 masks without a label_map look like).
    """

    def __init__(
        self,
        dataset: DatasetName = "folder",
        root: str = "data/demo",
        classes: list[str] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        label_train_ids: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 4,
        prefetch_factor: int = 4,
        crop_size: tuple[int, int] = CITYSCAPES_CROP,
        scale: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        val_mode: Literal["resize", "full"] = "resize",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        seed: int | None = None,
        pin_memory: bool = True,
        cache_dir: str | None = None,
        generate_demo: bool | str = False,
        base_size: tuple[int, int] | None = None,
        label_map: dict[int, int] | None = None,
        reduce_zero_label: bool = False,
        allow_missing_classes: bool = False,
    ) -> None:
        super().__init__()
        if base_size is not None:
            raise _base_size_error(base_size)
        if dataset not in DEFAULT_SCALES:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DEFAULT_SCALES)}")
        if reduce_zero_label and dataset != "folder":
            raise DataError(
                f"data.reduce_zero_label is for folder datasets; {dataset} masks are mapped by their own rule "
                "(ADE20K's is reduce_zero_label already): use data.label_map to change it"
            )
        if val_mode not in ("resize", "full"):
            raise ValueError(f"val_mode must be 'resize' or 'full', got {val_mode!r}")
        self.save_hyperparameters(ignore=["base_size"])
        self.dataset_name = dataset
        self.root = root
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.crop_size = tuple(crop_size)
        self.scale = tuple(scale) if scale is not None else DEFAULT_SCALES[dataset]
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.ignore_index = IGNORE_INDEX
        self.train_split, self.val_split = train_split, val_split
        self.test_split = test_split if test_split is not None else val_split
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.cache_dir = cache_dir
        self.seed = resolve_data_seed(seed)  # resolved once: seed_everything runs before the CLI builds us
        self._resume_at: tuple[int, int] | None = None
        self.train_transform = build_train_transform(
            crop_size=self.crop_size,
            scale=self.scale,
            scale_range=tuple(scale_range),
            cat_max_ratio=cat_max_ratio,
            flip_prob=flip_prob,
            photometric=photometric,
            mean=self.mean,
            std=self.std,
            seed=self.seed,
        )
        self.eval_transform = build_eval_transform(self.scale, val_mode, self.mean, self.std)
        self._datasets: dict[str, SegDataset] = {}
        # classes/palette are known without touching the splits (the model is built before setup())
        prepare_demo_root(root, generate_demo)
        if dataset == "folder":
            names, palette_, _ = resolve_classes(root, classes, palette)
        else:
            cls = CityscapesDataset if dataset == "cityscapes" else ADE20KDataset
            names, palette_ = list(cls.CLASSES), list(cls.PALETTE)
        self.classes: list[str] = names
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in palette_]
        self.num_classes = len(self.classes)
        # wrong entries fail before the model is built; keys as ints in the hyper-parameters too (a command line's
        # --data.label_map='{255: 1}' arrives with string keys)
        self.label_map = check_label_map(label_map, self.num_classes)
        self.hparams["label_map"] = self.label_map or None
        self._train_labels_checked = False

    def _make(self, split: str, transform: Any) -> SegDataset:
        hp = self.hparams
        ds: SegDataset
        if self.dataset_name == "folder":
            ds = FolderDataset(
                hp.root,
                split,
                hp.classes,
                hp.palette,
                hp.ignore_index,
                transform,
                label_map=self.label_map,
                reduce_zero_label=hp.reduce_zero_label,
            )
        elif self.dataset_name == "cityscapes":
            ds = CityscapesDataset(
                hp.root, split, label_train_ids=hp.label_train_ids, transform=transform, label_map=self.label_map
            )
        else:
            ds = ADE20KDataset(hp.root, split, transform=transform, label_map=self.label_map)
        ds.set_cache(self.cache_dir)
        return ds

    def dataset(self, stage: Literal["train", "val", "test"]) -> SegDataset:
        """The (cached) dataset of a stage, with its transform."""
        if stage not in self._datasets:
            split = {"train": self.train_split, "val": self.val_split, "test": self.test_split}[stage]
            transform = self.train_transform if stage == "train" else self.eval_transform
            self._datasets[stage] = self._make(split, transform)
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.check_train_labels()
            self.dataset("val")
        if stage == "validate":
            self.dataset("val")
        if stage in (None, "test"):
            self.dataset("test")

    def check_train_labels(self) -> None:
        """Before training: read a bounded sample of the training masks and refuse (`DataError`, naming the split,
        a file and the fix) when they hold no labelled pixel, or a class looks hidden as ignore (0/255 masks
        without ``label_map``; ``allow_missing_classes`` lets that one pass). See `seg.data.labels`."""
        if not self._train_labels_checked:
            check_training_masks(self.dataset("train"), self.hparams.allow_missing_classes)
            self._train_labels_checked = True

    def resume_train_at(self, epoch: int, batches: int) -> None:
        """Make the next `train_dataloader` start at batch `batches` of epoch `epoch` (a mid-epoch resume):
        the epoch's order and augmentations are as in the uninterrupted run, minus the batches already trained."""
        self._resume_at = (int(epoch), int(batches))

    def _loader(self, stage: Literal["train", "val", "test"]) -> DataLoader:
        ds: Dataset = self.dataset(stage)
        train = stage == "train"
        sampler: Sampler | None = None
        drop_last = False
        batch_size = self.batch_size if train else self.val_batch_size
        if train:  # (index, seed) pairs: order from (seed, epoch), augmentation from (seed, epoch, position)
            sampler = EpochSampler(len(ds), seed=self.seed, shuffle=True)
            if self._resume_at is not None:
                epoch, batches = self._resume_at
                sampler.set_epoch(epoch)
                sampler.skip_next(batches * batch_size)
                self._resume_at = None
            drop_last = len(sampler) > batch_size  # this rank's samples; BatchNorm fails on a last batch of 1
            ds = SeededDataset(ds)
        elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnpaddedDistributedSampler(ds)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            worker_init_fn=seed_worker,
            collate_fn=collate,
            # creating an iterator draws the workers' base seed from here, not from the global RNG (which
            # would shift dropout after a resume)
            generator=loader_generator(self.seed, stage),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
