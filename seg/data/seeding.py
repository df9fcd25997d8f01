"""Seeding of data loading: every random draw comes from the DataModule's one data seed.

The rule (`SegDataModule` applies it):

* The data seed is ``data.seed`` when given, else the seed of Lightning's ``seed_everything`` (``PL_GLOBAL_SEED``,
  which ``train.py``'s ``seed_everything`` sets), else 0 (:func:`resolve_data_seed`). A fixed fallback, not
  fresh entropy, so that every DDP rank derives the same order without talking to the others.
* The training order of epoch ``e`` is drawn from ``(seed, e)`` (`seg.data.samplers.EpochSampler`), and each
  training sample's augmentation is reseeded from ``(seed, e, position in the epoch)`` (:class:`SeededDataset`):
  a sample's augmentation does not depend on which worker loads it, on ``num_workers``, or on what came before,
  so a resume that skips the batches already trained reproduces the rest of the epoch exactly.
* Each DataLoader has a generator of its own, seeded from ``(seed, stage)`` (:func:`loader_generator`): creating
  an iterator (which draws the workers' base seed) never draws from the global torch RNG, which would shift
  dropout after a resume. torch seeds ``random``/``numpy``/``torch`` in each worker from that base seed, and
  :func:`seed_worker` does the same for the albumentations pipeline, which has generators of its own.

This module imports neither the datasets nor the transforms (both use it), so it sits below them.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

_STAGES = {"train": 0, "val": 1, "test": 2}


def resolve_data_seed(seed: Optional[int]) -> int:
    """`seed` if given, else the seed of Lightning's ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.

    Lightning's own rule for an unseeded ``seed_everything()``, so data and model follow one seed by default.
    """
    if seed is not None:
        return int(seed)
    env = os.environ.get("PL_GLOBAL_SEED")
    if env is None:
        return 0
    try:
        return int(env)
    except ValueError:
        raise ValueError(f"PL_GLOBAL_SEED={env!r} is not an integer; set data.seed or seed_everything") from None


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at `position` of epoch `epoch`'s order (a 32-bit hash)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint32)[0])


def loader_generator(seed: int, stage: Literal["train", "val", "test"]) -> torch.Generator:
    """A DataLoader's own generator: its workers' base seeds come from here, not from the global torch RNG.

    The train stream keeps the plain data seed (what checkpoints written before this module used).
    """
    if stage == "train":
        return torch.Generator().manual_seed(seed)
    stream = int(np.random.SeedSequence([seed, _STAGES[stage]]).generate_state(1, np.uint32)[0])
    return torch.Generator().manual_seed(stream)


def reseed_transform(transform: Any, seed: Optional[int]) -> None:
    """One shared numpy + python generator for a whole albumentations pipeline, seeded with `seed`.

    (`Compose.set_random_seed` would give every step its own generator with the *same* seed, which
    correlates the steps' decisions.) None draws fresh OS entropy. Objects without ``set_random_state`` are left.
    """
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def find_reseed(dataset: Any) -> Optional[Callable[[int], None]]:
    """The function that reseeds `dataset`'s augmentations: its ``reseed`` (seg datasets), looking through
    wrappers that keep the wrapped one as ``.dataset`` (torch ``Subset``), else its albumentations transform's
    ``set_random_seed``; None if there is neither."""
    inner = dataset
    while not hasattr(inner, "reseed") and hasattr(inner, "dataset"):
        inner = inner.dataset
    if hasattr(inner, "reseed"):
        return inner.reseed
    transform = getattr(inner, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        return transform.set_random_seed
    return None


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's augmentation pipeline from torch's worker seed.

    torch seeds ``random``, ``numpy`` and ``torch`` in each worker from ``base_seed + worker_id``, where
    ``base_seed`` comes from the loader's generator (:func:`loader_generator`); the albumentations pipeline keeps
    generators of its own, which would otherwise repeat the same draws in every worker.
    """
    info = get_worker_info()
    if info is None:
        return
    reseed = find_reseed(info.dataset)
    if reseed is not None:
        reseed(info.seed % 2**32)


class SeededDataset(Dataset):
    """Wraps a dataset for an index sampler that yields ``(index, seed)`` pairs (`EpochSampler`): reseeds the
    augmentations (the dataset's own and python/numpy/torch's global RNGs) with `seed`, returns
    ``dataset[index]``.

    The caller's global RNG states are left as they were (with ``num_workers=0`` loading runs in the training
    process, whose dropout must not see it).

    Args:
        dataset: the dataset to wrap; its augmentations are reseeded through :func:`find_reseed`.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._reseed = find_reseed(dataset)
        if self._reseed is None:
            warnings.warn(
                f"{type(dataset).__name__} has no reseed()/transform.set_random_seed(); its augmentations "
                "are only seeded through the global RNGs",
                stacklevel=2,
            )

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
