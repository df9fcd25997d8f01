"""seg.data seeding: one data seed decides the training order and every augmentation (`seg.data.seeding`),
`EpochSampler` (order, shards, mid-epoch skip), `SeededDataset`, and `SegDataModule`'s loaders built from it:
the same batches with 0 or 2 workers, a new order per epoch and per seed, `resume_train_at`, and no draw from
the global RNGs."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import folder_tree

from seg.data import EpochSampler, SeededDataset, SegDataModule
from seg.data.seeding import resolve_data_seed, sample_seed


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """6 train / 3 val random 40x40 images (3 classes + ignore)."""
    root = tmp_path_factory.mktemp("seeding")
    folder_tree(root, "train", n=6, size=(40, 40), classes=["a", "b", "c"])
    folder_tree(root, "val", n=3, size=(40, 40))
    return root


def _dm(root: Path, **kw) -> SegDataModule:
    kw = {"batch_size": 2, "num_workers": 0, "crop_size": (24, 24), "seed": 0, **kw}
    return SegDataModule("folder", str(root), **kw)


def _epochs(loader, n: int) -> list[list[dict]]:
    """n plain passes over a loader (no set_epoch: the sampler moves on by itself)."""
    return [[{"path": b["path"], "image": b["image"], "mask": b["mask"]} for b in loader] for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["path"] == y["path"] and torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        for x, y in zip(a, b)
    )


def test_epoch_sampler_deterministic_skip_shards_and_next_epoch():
    s = EpochSampler(11, seed=3)
    s.set_epoch(2)
    a = list(s)
    assert sorted(i for i, _ in a) == list(range(11))
    assert [seed for _, seed in a] == [sample_seed(3, 2, p) for p in range(11)]  # position in the epoch's order
    s.set_epoch(2)
    assert list(s) == a  # the order depends on (seed, epoch) only
    assert s.epoch == 2
    nxt = list(s)  # no set_epoch since the last pass: the next epoch
    assert s.epoch == 3 and [i for i, _ in nxt] != [i for i, _ in a]
    s.set_epoch(2)
    s.skip_next(4)
    assert list(s) == a[4:]
    s.set_epoch(2)
    assert list(s) == a  # the skip applies once
    assert [i for i, _ in EpochSampler(11, seed=4)] != [i for i, _ in EpochSampler(11, seed=3)]
    shards = [list(EpochSampler(11, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6  # padded like DistributedSampler
    assert {i for sh in shards for i, _ in sh} == set(range(11))


class _AugDataset(torch.utils.data.Dataset):
    """Draws its 'augmentation' from a reseedable generator, like the albumentations pipeline."""

    def __init__(self):
        self.rng = random.Random(0)

    def reseed(self, seed):
        self.rng = random.Random(seed)

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return i, self.rng.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_dataset_is_order_independent_and_leaves_global_rng():
    ds = SeededDataset(_AugDataset())
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = [ds[(i, 100 + i)] for i in range(5)]
    assert [ds[(i, 100 + i)] for i in reversed(range(5))] == first[::-1]
    assert len({x[1:] for x in first}) == 5  # every seed its own draws
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()


def test_data_seed_none_follows_seed_everything(root, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert resolve_data_seed(None) == 0 and _dm(root, seed=None).seed == 0
    L.seed_everything(7, verbose=False)
    assert _dm(root, seed=None).seed == 7
    assert _dm(root, seed=5).seed == 5  # an explicit data.seed wins
    monkeypatch.setenv("PL_GLOBAL_SEED", "x")
    with pytest.raises(ValueError, match="PL_GLOBAL_SEED"):
        resolve_data_seed(None)


def test_same_seed_same_batches_with_any_workers_and_no_global_rng_draws(root):
    """num_workers 0 and 2 give the same batches (order and augmentation) for two epochs; creating and running
    the train and val iterators leaves the global torch RNG as it was (dropout after a resume depends on it)."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    dm0 = _dm(root)
    ref = _epochs(dm0.train_dataloader(), 2)
    list(dm0.val_dataloader())
    assert torch.equal(torch.get_rng_state(), state)
    dm2 = _dm(root, num_workers=2)
    got = _epochs(dm2.train_dataloader(), 2)
    assert _same(got[0], ref[0]) and _same(got[1], ref[1])
    list(dm2.val_dataloader())
    assert torch.equal(torch.get_rng_state(), state)
    assert [b["path"] for b in ref[0]] != [b["path"] for b in ref[1]]  # a new order every epoch
    other = _epochs(_dm(root, seed=1).train_dataloader(), 1)[0]
    assert [b["path"] for b in other] != [b["path"] for b in ref[0]]  # and per data seed


def test_workers_and_epochs_get_different_augmentations(tmp_path):
    # four copies of the same image: any difference between samples comes from the augmentation draws
    folder_tree(tmp_path, n=1, size=(40, 40), classes=["a", "b", "c"])
    for i in range(1, 4):
        for sub in ("images", "masks"):
            (tmp_path / "train" / sub / f"im{i}.png").write_bytes((tmp_path / "train" / sub / "im0.png").read_bytes())
    e1, e2 = _epochs(_dm(tmp_path, batch_size=1, num_workers=2).train_dataloader(), 2)
    images = [b["image"] for b in e1 + e2]
    assert len(images) == 8
    for i in range(8):  # samples from the two workers and the two epochs all differ
        for j in range(i + 1, 8):
            assert not torch.equal(images[i], images[j]), (i, j)


def test_resume_train_at_continues_the_epoch(root):
    """`resume_train_at(1, 2)`: the next loader yields epoch 1 from its third batch on, as the uninterrupted
    loader does (order and augmentations); the loader after it starts epochs from the beginning again."""
    full = _epochs(_dm(root).train_dataloader(), 2)[1]
    dm = _dm(root)
    dm.resume_train_at(1, 2)
    loader = dm.train_dataloader()
    assert _same(_epochs(loader, 1)[0], full[2:])
    assert len(_epochs(dm.train_dataloader(), 1)[0]) == len(full)
