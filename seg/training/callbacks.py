"""Callbacks: atomic checkpoints (best by val/mIoU + last), a run summary for ``seg.compare``, and
validation images for W&B.

Why our own checkpoint writer: Lightning's ``TorchCheckpointIO`` (``fabric.utilities.cloud_io._atomic_save``)
writes local files through an fsspec transaction whose temporary file lives in the *system temp dir*; the
final ``shutil.move`` is a rename only when that dir is on the same filesystem as the run, otherwise a
non-atomic copy, and nothing is fsynced. :class:`AtomicCheckpointIO` writes through
:func:`seg.models.checkpoint.atomic_save` (temp file next to the target, fsync, ``os.replace``, fsync of the
folder), so ``last.ckpt``/``best.ckpt`` is always either the previous or the new complete file, and it refuses
to write NaN/Inf weights. It also reads ``--ckpt_path`` without running code from the file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from seg.models.checkpoint import atomic_save, atomic_write_text, read_checkpoint, remove_stale_temp_files


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` atomically (see :func:`seg.models.checkpoint.atomic_save`); NaN/Inf weights raise."""
    atomic_save(obj, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic and refuse non-finite weights, and whose loads (the
    ``--ckpt_path`` resume) never run code from the file and name the file in their errors (see
    :mod:`seg.models.checkpoint`). Remote URLs use Lightning's own IO."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, what="--ckpt_path")


class SegCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (highest ``val/mIoU``) and ``last.ckpt`` in ``dirpath``, both written atomically.

    Saved after every validation, so ``--ckpt_path last`` resumes from the latest validation (set
    ``every_n_train_steps`` to also save ``last.ckpt`` between validations).
    """

    def __init__(self, dirpath: Optional[str] = None, monitor: str = "val/mIoU", mode: str = "max",
                 every_n_train_steps: Optional[int] = None) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                         save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps)

        self._last_written_step = -1

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _ensure_last(self, trainer: L.Trainer) -> None:
        # Lightning >= 2.5 writes last.ckpt only when a top-k checkpoint was written at the same step; a resume
        # point must follow every validation (and the end of training) whether or not the metric improved.
        if (self.save_last and not trainer.fast_dev_run and trainer.state.fn == "fit" and not trainer.sanity_checking
                and self._last_written_step != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._ensure_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._ensure_last(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and "://" not in str(self.dirpath):
            check_checkpoint_dir(Path(self.dirpath))
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # leave custom (e.g. FSDP/async) IO alone
            strategy.checkpoint_io = AtomicCheckpointIO()


def check_checkpoint_dir(directory: Path) -> None:
    """Fail at the start of training, not at the first save thousands of steps later, if ``directory`` is not
    writable; remove temp files that a process killed mid-save left there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_text("", directory / ".write_test")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"checkpoint folder {directory} is not writable ({err.strerror or err}): fix its "
                              "permissions or free space, or set --checkpoint.dirpath (or "
                              "--trainer.default_root_dir) to a writable folder") from None
    for p in remove_stale_temp_files(directory):
        rank_zero_info(f"removed {p}, a partial checkpoint of an interrupted save")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class RunSummary(L.Callback):
    """Writes ``<run_dir>/summary.json`` after every validation: last and best val metrics (mIoU, aAcc, mAcc,
    per-class IoU), step, model and parameter count, training throughput (images/s), peak CUDA memory (MiB, on GPU).
    ``seg.compare`` reads it.

    Args:
        run_dir: the run directory; None = ``trainer.default_root_dir``.
    """

    def __init__(self, run_dir: Optional[str] = None) -> None:
        self.run_dir = run_dir
        self._t0: Optional[float] = None
        self._images = 0
        self._seconds = 0.0
        self.best: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is not None and trainer.global_step > 5:  # skip warm-up (cudnn autotune, compile)
            self._seconds += time.perf_counter() - self._t0
            self._images += batch["image"].shape[0] * trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        last = getattr(pl_module, "last_metrics", {}).get("val")
        if last is None:
            return
        if self.best is None or last["mIoU"] > self.best["mIoU"]:
            self.best = dict(last)
        self._write(trainer, pl_module, last)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, last: dict[str, Any]) -> None:
        hp = dict(getattr(pl_module, "hparams", {}))
        run_dir = Path(self.run_dir or trainer.default_root_dir)
        summary = {
            "backbone": hp.get("backbone"), "head": hp.get("head"), "num_classes": hp.get("num_classes"),
            "params": count_parameters(pl_module.model) if hasattr(pl_module, "model") else None,
            "global_step": trainer.global_step, "max_steps": trainer.max_steps,
            "train_images_per_s": self._images / self._seconds if self._seconds > 0 else None,
            "peak_cuda_memory_mb": (torch.cuda.max_memory_allocated(pl_module.device) / 2**20
                                    if pl_module.device.type == "cuda" else None),
            "last": last, "best": self.best,
        }
        atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")


class ValImageLogger(L.Callback):
    """Logs the first ``num_images`` validation images with predicted and ground-truth masks (class names as
    labels) to every W&B logger at each validation (rank 0's shard)."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._images: list[Any] = []

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[Any]:
        from lightning.pytorch.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._images = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (trainer.sanity_checking or trainer.global_rank != 0 or not isinstance(outputs, dict)
                or len(self._images) >= self.num_images or not self._wandb_loggers(trainer)):
            return
        import cv2
        import numpy as np
        import wandb

        dm = trainer.datamodule
        mean = torch.tensor(getattr(dm, "mean", (123.675, 116.28, 103.53))).view(3, 1, 1)
        std = torch.tensor(getattr(dm, "std", (58.395, 57.12, 57.375))).view(3, 1, 1)
        labels = dict(enumerate(pl_module.class_names))
        labels[255] = "ignore"
        for i in range(min(batch["image"].shape[0], self.num_images - len(self._images))):
            img = (batch["image"][i].float().cpu() * std + mean).clamp(0, 255).byte().permute(1, 2, 0).numpy()
            pred = outputs["preds"][i].cpu().numpy().astype(np.uint8)
            gt = batch["mask"][i].cpu().numpy().astype(np.uint8)
            if "img_shape" in batch:  # eval images are at the test scale, masks at the original size: crop, resize
                (h, w), (oh, ow) = batch["img_shape"][i].tolist(), batch["ori_shape"][i].tolist()
                img, pred, gt = cv2.resize(np.ascontiguousarray(img[:h, :w]), (ow, oh)), pred[:oh, :ow], gt[:oh, :ow]
            self._images.append(wandb.Image(img, caption=Path(batch["path"][i]).name, masks={
                "prediction": {"mask_data": pred, "class_labels": labels},
                "ground_truth": {"mask_data": gt, "class_labels": labels}}))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._images:
            for lg in self._wandb_loggers(trainer):
                lg.log_image(key="val/examples", images=self._images, step=trainer.global_step)
        self._images = []


class SegProgressBar(RichProgressBar):
    """Rich progress bar whose epoch label reads ``Epoch 3 (max 80000 iters)`` in iteration-based runs
    (``max_epochs: -1`` with ``max_steps``, the mmseg way) instead of Lightning's ``Epoch 3/-2``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            text += f"/{trainer.max_epochs - 1}"
        elif trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" (max {trainer.max_steps} iters)"
        return f"{text:{len(self.validation_description)}}"  # padded: no flicker against "Validation"
