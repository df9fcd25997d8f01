"""Checkpoint files of a training run: ``best.ckpt`` (highest val/mIoU) and ``last.ckpt``, written atomically.

Why our own checkpoint writer: Lightning's ``TorchCheckpointIO`` (``fabric.utilities.cloud_io._atomic_save``)
writes local files through an fsspec transaction whose temporary file lives in the *system temp dir*; the
final ``shutil.move`` is a rename only when that dir is on the same filesystem as the run, otherwise a
non-atomic copy, and nothing is fsynced. :class:`AtomicCheckpointIO` writes through
:func:`seg.models.checkpoint.atomic_save` (temp file next to the target, fsync, ``os.replace``, fsync of the
folder), so ``last.ckpt``/``best.ckpt`` is always either the previous or the new complete file, and it refuses
to write NaN/Inf weights. It also reads ``--ckpt_path`` without running code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from seg.io import atomic_write_text, remove_stale_temp_files
from seg.models.checkpoint import atomic_save
from seg.models.safe_load import read_checkpoint

__all__ = ["AtomicCheckpointIO", "SegCheckpoint", "check_checkpoint_dir", "remove_partial_checkpoints"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic and refuse non-finite weights, and whose loads (the
    ``--ckpt_path`` resume) never run code from the file and name the file in their errors (see
    :mod:`seg.models.checkpoint`). Remote URLs use Lightning's own IO."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, what="--ckpt_path")


class SegCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (highest ``val/mIoU``) and ``last.ckpt`` in ``dirpath``, both written atomically.

    Saved after every validation, so ``--ckpt_path last`` resumes from the latest validation (set
    ``every_n_train_steps`` to also save ``last.ckpt`` between validations).
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        monitor: str = "val/mIoU",
        mode: str = "max",
        every_n_train_steps: Optional[int] = None,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
            every_n_train_steps=every_n_train_steps,
        )

        self._last_written_step = -1
        self.resuming = False  # set by train.py when --ckpt_path is given

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _ensure_last(self, trainer: L.Trainer) -> None:
        # Lightning >= 2.5 writes last.ckpt only when a top-k checkpoint was written at the same step; a resume
        # point must follow every validation (and the end of training) whether or not the metric improved.
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and self._last_written_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._ensure_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._ensure_last(trainer)

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:
        # replaces Lightning's "exists and is not empty" warning: silent on a resume (the folder is expected to hold
        # the run's checkpoints), explicit about what happens otherwise
        if self.resuming or "://" in str(dirpath) or not Path(dirpath).is_dir():
            return
        found = sorted(p.name for p in Path(dirpath).glob("*.ckpt"))
        if found:
            rank_zero_warn(
                f"{dirpath} holds {', '.join(found)} of an earlier run: this run replaces them. To continue "
                "that run instead, pass --ckpt_path last; to keep both, set another "
                "--trainer.default_root_dir."
            )

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
        raise PermissionError(
            f"checkpoint folder {directory} is not writable ({err.strerror or err}): fix its "
            "permissions or free space, or set --checkpoint.dirpath (or "
            "--trainer.default_root_dir) to a writable folder"
        ) from None
    remove_partial_checkpoints(directory)


def remove_partial_checkpoints(directory: Path) -> None:
    """Remove the temp files a process killed mid-save left in ``directory`` (their writer is gone), saying so."""
    for p in remove_stale_temp_files(directory):
        rank_zero_info(f"removed {p}, a partial checkpoint of an interrupted save")
