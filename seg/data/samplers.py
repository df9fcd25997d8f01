"""UnpaddedDistributedSampler: every sample exactly once across ranks, for validation and test.

`torch.utils.data.DistributedSampler` pads an uneven split with duplicates (so every rank gets the same
number of samples), and `drop_last=True` drops samples instead; either way a dataset-level metric such as
mIoU computed over all ranks differs from the single-process one. This sampler gives rank r the indices
r, r + world, r + 2*world, ... so ranks may differ by one sample, but the union is the dataset exactly once.

It subclasses DistributedSampler so that Lightning leaves it in place instead of injecting a padded one.
"""
from __future__ import annotations

from typing import Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Sequential, unpadded, non-shuffled sharding of `dataset` over `num_replicas` ranks.

    Args:
        dataset: anything with `len()`.
        num_replicas: world size; default: from the initialised process group, else 1.
        rank: this rank; default: from the initialised process group, else 0.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} is not in [0, {num_replicas})')
        # DistributedSampler.__init__ would query the process group; set the fields ourselves.
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.shuffle = False
        self.seed = 0
        self.drop_last = False
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
