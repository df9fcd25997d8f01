"""``<run_dir>/summary.json``: the last and best validation metrics of a run and its cost, what ``seg.compare``
reads."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from seg.io import write_json

__all__ = ["RunSummary", "ValidateAtEnd", "count_parameters"]


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
            "backbone": hp.get("backbone"),
            "head": hp.get("head"),
            "num_classes": hp.get("num_classes"),
            "params": count_parameters(pl_module.model) if hasattr(pl_module, "model") else None,
            "global_step": trainer.global_step,
            "max_steps": trainer.max_steps,
            "train_images_per_s": self._images / self._seconds if self._seconds > 0 else None,
            "peak_cuda_memory_mb": (
                torch.cuda.max_memory_allocated(pl_module.device) / 2**20 if pl_module.device.type == "cuda" else None
            ),
            "last": last,
            "best": self.best,
        }
        write_json(summary, run_dir / "summary.json")


class ValidateAtEnd(L.Callback):
    """Validate after the last training step when it is not a validation step anyway, so every finished run has
    its final metrics, ``last.ckpt`` at its last step and a ``summary.json`` (``max_steps`` below
    ``val_check_interval``, or a budget that is not a multiple of it).

    How: at the end of the last step it sets ``trainer.should_stop``, on which Lightning's training loop runs the
    validation loop before it stops (``_should_check_val_fx``: stopping early validates).
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        last_step = trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        epoch_loop = trainer.fit_loop.epoch_loop
        last_epoch = (
            trainer.max_epochs is not None
            and trainer.max_epochs > 0
            and trainer.current_epoch >= trainer.max_epochs - 1
            and epoch_loop.batch_progress.is_last_batch
        )
        if (last_step or last_epoch) and trainer.enable_validation:
            trainer.should_stop = True
