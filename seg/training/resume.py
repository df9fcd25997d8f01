"""Exact resume: a training data order and augmentation stream that a checkpoint can continue mid-epoch.

Lightning restores weights, optimizer, LR scheduler and loop counters, but on a mid-epoch resume it restarts
the train DataLoader from its first batch, and it does not save RNG states. Here:

* :class:`EpochSampler` draws the epoch's permutation from ``(seed, epoch)`` only (not from the global RNG),
  shards it over DDP ranks (padding like ``DistributedSampler``, which is harmless for training) and can skip
  the batches a checkpoint had already consumed.
* :class:`SeededDataset` re-seeds the augmentation pipeline for every sample from ``(seed, epoch, position)``,
  so a sample's augmentation does not depend on which worker loads it, on ``num_workers``, or on what came
  before: skipping batches reproduces the rest of the epoch exactly.
* :class:`ExactResume` (a callback that ``seg.training.cli`` always adds) swaps the data module's train loader
  for this one, saves the position and every rank's RNG states in the checkpoint, and restores them right
  before the first training step after a resume.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

_KEY = "seg_exact_resume"


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint32)[0])


class EpochSampler(DistributedSampler):
    """Yields ``(index, sample_seed)`` pairs; the order depends only on ``(seed, epoch)``.

    Subclasses DistributedSampler so that Lightning neither replaces it under DDP nor forgets ``set_epoch``.

    Args:
        num_samples: dataset length.
        seed: base seed of the order and of the per-sample augmentation seeds.
        shuffle: random permutation per epoch (else sequential).
        num_replicas, rank: DDP sharding; default from the initialised process group, else 1 / 0.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.dataset_len = num_samples
        self.seed, self.shuffle, self.epoch, self.drop_last = seed, shuffle, 0, False
        self.num_samples = math.ceil(num_samples / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, num_samples: int) -> None:
        """Drop the first ``num_samples`` of this rank's items from the next ``__iter__`` only."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        order += order[: self.total_size - len(order)]  # pad to a multiple of the world size
        positions = range(self.rank, self.total_size, self.num_replicas)
        items = [(order[p], _sample_seed(self.seed, self.epoch, p)) for p in positions][self._skip:]
        self._skip = 0
        return iter(items)  # a list, so the epoch is fixed when the iterator is created

    def __len__(self) -> int:
        return self.num_samples


class SeededDataset(Dataset):
    """Wraps a dataset indexed by ``(index, seed)``: re-seeds its augmentations, returns ``dataset[index]``.

    The global python/numpy/torch RNG states are left as they were (dropout etc. must not see data loading).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        inner = dataset
        while not hasattr(inner, "reseed") and hasattr(inner, "dataset"):  # e.g. torch Subset
            inner = inner.dataset
        self._reseed = getattr(inner, "reseed", None)
        if self._reseed is None:
            transform = getattr(inner, "transform", None)
            if transform is not None and hasattr(transform, "set_random_seed"):
                self._reseed = transform.set_random_seed
        if self._reseed is None:
            rank_zero_warn(f"{type(inner).__name__} has no reseed()/transform.set_random_seed(); its augmentations "
                           "are only seeded through the global RNGs")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            if self._reseed is not None:
                self._reseed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def resumable_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same DataLoader (batch size, workers, collate, ...) with :class:`EpochSampler` + :class:`SeededDataset`."""
    if isinstance(loader.sampler, EpochSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("exact resume needs a DataLoader built with batch_size (not a custom batch_sampler)")
    shuffle = isinstance(loader.sampler, RandomSampler) or getattr(loader.sampler, "shuffle", False)
    sampler = EpochSampler(len(loader.dataset), seed=seed, shuffle=shuffle)
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds off the global RNG
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(SeededDataset(loader.dataset), **kwargs)


def _rng_state() -> dict[str, Any]:
    # tensors / ints / tuples only, so checkpoints stay loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "python": random.getstate()}
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

    Args:
        seed: base seed of the training data order and augmentations.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._pending: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    # -- the train loader ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit" or dm is None or getattr(dm, "_seg_exact_resume", False):
            return
        original = dm.train_dataloader

        def train_dataloader() -> DataLoader:
            loader = resumable_loader(original(), self.seed)
            if self._pending is not None:  # first loader after a resume: continue mid-epoch
                loader.sampler.set_epoch(self._pending["epoch"])
                loader.sampler.skip_next(self._pending["batches"] * loader.batch_size)
                self._pending = None
            return loader

        dm.train_dataloader = train_dataloader  # instance attribute: Lightning asks the data module for it
        dm._seg_exact_resume = True

    # -- checkpoint state ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = _rng_state()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, state)  # every rank's generator, restored per rank
        else:
            states = [state]
        checkpoint[_KEY] = {
            "seed": self.seed,
            "epoch": trainer.current_epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "num_training_batches": trainer.num_training_batches,
            "rng": states,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(_KEY)
        if saved is None:
            rank_zero_warn("checkpoint has no exact-resume state (written without seg's ExactResume); the data order "
                           "restarts at the beginning of an epoch and RNG states are not restored")
            return
        if saved["seed"] != self.seed:
            rank_zero_warn(f"resuming with data seed {self.seed} but the checkpoint used {saved['seed']}")
        epoch, batches = saved["epoch"], saved["batches"]
        if batches >= saved["num_training_batches"]:  # saved at the end of an epoch
            epoch, batches = epoch + 1, 0
        self._pending = {"epoch": epoch, "batches": batches}
        states = saved["rng"]
        rank = trainer.global_rank
        if len(states) == trainer.world_size:
            self._rng_to_restore = states[rank]
        else:
            rank_zero_warn(f"checkpoint RNG states are from {len(states)} process(es), now {trainer.world_size}; "
                           "data order is exact, dropout randomness is not")
            self._rng_to_restore = states[0]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Restore here, not at load time: the sanity check and val loaders draw from the global RNG in between.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
