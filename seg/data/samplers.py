"""Which samples each DDP rank sees, in which order: `EpochSampler` (training) and `UnpaddedDistributedSampler`
(validation and test).

* `EpochSampler` draws epoch ``e``'s permutation from ``(seed, e)`` only (not from the global RNG), shards it
  over the ranks (padding like ``DistributedSampler``, harmless for training), pairs every index with its
  augmentation seed (`seg.data.seeding.sample_seed`) and can skip the samples a checkpoint had already trained
  on, so a resume continues mid-epoch.
* `torch.utils.data.DistributedSampler` pads an uneven split with duplicates (so every rank gets the same
  number of samples), and `drop_last=True` drops samples instead; either way a dataset-level metric such as
  mIoU computed over all ranks differs from the single-process one. `UnpaddedDistributedSampler` gives rank r
  the indices r, r + world, r + 2*world, ... so ranks may differ by one sample, but the union is the dataset
  exactly once.

Both subclass DistributedSampler so that Lightning neither replaces them under DDP nor forgets ``set_epoch``;
they set its fields themselves (`_ShardedSampler`), since its ``__init__`` needs a process group.
"""

from __future__ import annotations

import math
from typing import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .seeding import sample_seed


class _ShardedSampler(DistributedSampler):
    """DistributedSampler's fields without its ``__init__`` (which queries the process group even for 1 rank).

    Args:
        dataset_len: number of samples.
        seed: base seed of the order (and of the per-sample seeds, where a subclass draws them).
        shuffle: whether the subclass permutes.
        num_replicas: world size; default: from the initialised process group, else 1.
        rank: this rank; default: from the initialised process group, else 0.
    """

    def __init__(self, dataset_len: int, seed: int, shuffle: bool, num_replicas: int | None, rank: int | None) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.dataset_len = dataset_len
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.shuffle, self.epoch, self.drop_last = seed, shuffle, 0, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples


class EpochSampler(_ShardedSampler):
    """Yields ``(index, sample_seed)`` pairs (for `seg.data.seeding.SeededDataset`); the order depends only on
    ``(seed, epoch)``, the seeds on ``(seed, epoch, position)``.

    A pass uses the epoch given to `set_epoch` (Lightning calls it before every epoch); a pass without a
    `set_epoch` call since the previous one moves on to the next epoch, so a plain ``for batch in loader`` loop
    outside Lightning also gets a new order and new augmentations every epoch.

    Args:
        num_samples: dataset length.
        seed: base seed of the order and of the per-sample augmentation seeds.
        shuffle: random permutation per epoch (else sequential).
        num_replicas, rank: DDP sharding; default from the initialised process group, else 1 / 0.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_samples, seed, shuffle, num_replicas, rank)
        self.num_samples = math.ceil(num_samples / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._skip = 0
        self._epoch_unused = True  # self.epoch was set and no pass has used it yet

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_unused = True

    def skip_next(self, num_samples: int) -> None:
        """Drop the first ``num_samples`` of this rank's items from the next ``__iter__`` only."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self._epoch_unused:
            self.epoch += 1
        self._epoch_unused = False
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        order += order[: self.total_size - len(order)]  # pad to a multiple of the world size
        positions = range(self.rank, self.total_size, self.num_replicas)
        items = [(order[p], sample_seed(self.seed, self.epoch, p)) for p in positions][self._skip :]
        self._skip = 0
        return iter(items)  # a list, so the epoch is fixed when the iterator is created


class UnpaddedDistributedSampler(_ShardedSampler):
    """Sequential, unpadded, non-shuffled sharding of `dataset` over `num_replicas` ranks.

    Args:
        dataset: anything with `len()`.
        num_replicas: world size; default: from the initialised process group, else 1.
        rank: this rank; default: from the initialised process group, else 0.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(len(dataset), 0, False, num_replicas, rank)
        self.dataset = dataset
        self.total_size = len(dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
