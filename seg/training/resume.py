"""Exact resume: the Lightning side. The data side (order and augmentation seeded per epoch and sample, so a
loader can continue mid-epoch) belongs to the DataModule: `seg.data.samplers.EpochSampler`,
`seg.data.seeding.SeededDataset`, `SegDataModule.resume_train_at`.

Lightning restores weights, optimizer, LR scheduler and loop counters, but on a mid-epoch resume it restarts
the train DataLoader from its first batch, and it does not save RNG states. :class:`ExactResume` (a callback
that ``seg.training.cli`` always adds) saves the training position (epoch, batches done) and every rank's global
torch/numpy/python (and CUDA) RNG states in the checkpoint; on resume it hands the position to the DataModule
and restores the RNG states right before the first training step.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

__all__ = ["ExactResume"]

_KEY = "seg_exact_resume"


def _rng_state() -> dict[str, Any]:
    # tensors / ints / tuples only, so checkpoints stay loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(L.Callback):
    """Makes ``--ckpt_path`` resumes continue the uninterrupted run: same next batches, same augmentations,
    same RNG for dropout (per rank), on top of what Lightning restores (weights, optimizer, LR schedule, step).

    The data module must offer ``resume_train_at(epoch, batches)`` and a ``seed`` (as `SegDataModule` does);
    with another one the weights resume exactly, the data order restarts at the beginning of an epoch.
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None

    # -- checkpoint state ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = _rng_state()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, state)  # every rank's generator, restored per rank
        else:
            states = [state]
        checkpoint[_KEY] = {
            "seed": getattr(trainer.datamodule, "seed", None),
            "epoch": trainer.current_epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "num_training_batches": trainer.num_training_batches,
            "rng": states,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(_KEY)
        if saved is None:
            rank_zero_warn(
                "checkpoint has no exact-resume state (written without seg's ExactResume); the data order "
                "restarts at the beginning of an epoch and RNG states are not restored"
            )
            return
        dm = trainer.datamodule
        seed = getattr(dm, "seed", None)
        if saved["seed"] != seed:
            rank_zero_warn(
                f"resuming with data seed {seed} but the checkpoint used {saved['seed']}: the rest of the "
                "epoch follows the new seed's order (set --data.seed to the checkpoint's to continue it)"
            )
        epoch, batches = saved["epoch"], saved["batches"]
        if batches >= saved["num_training_batches"]:  # saved at the end of an epoch
            epoch, batches = epoch + 1, 0
        if hasattr(dm, "resume_train_at"):
            dm.resume_train_at(epoch, batches)  # Lightning builds the train loader after this hook
            # Lightning cannot see that the loader continues mid-epoch, and would say the resume is unreliable
            warnings.filterwarnings(
                "ignore",
                message="You're resuming from a checkpoint that ended before the epoch",
                category=PossibleUserWarning,
            )
        else:
            what = type(dm).__name__ if dm is not None else "a run without a DataModule"
            rank_zero_warn(
                f"{what} has no resume_train_at(epoch, batches); the data order restarts at the beginning of an epoch"
            )
        states = saved["rng"]
        rank = trainer.global_rank
        if len(states) == trainer.world_size:
            self._rng_to_restore = states[rank]
        else:
            rank_zero_warn(
                f"checkpoint RNG states are from {len(states)} process(es), now {trainer.world_size}; "
                "data order is exact, dropout randomness is not"
            )
            self._rng_to_restore = states[0]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Restore here, not at load time: what runs in between (sanity check, loader start-up) must not shift it.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
