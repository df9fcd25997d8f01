"""SegDataModule (batches, decode cache, DDP sampler, YAML construction) and the synthetic demo data (its seeding:
test_data_seeding.py)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import folder_tree, write_mask, write_rgb

from seg.data import FolderDataset, SegDataModule, UnpaddedDistributedSampler, ensure_demo_data
from seg.data import datamodule as dm_module
from seg.data.datamodule import upgrade_data_hparams
from seg.data.synthetic import CLASSES, PALETTE, SIZE


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ensure_demo_data(tmp_path_factory.mktemp("demo") / "demo")


def test_batches_follow_the_contract(demo):
    dm = SegDataModule("folder", str(demo), batch_size=4, num_workers=0, crop_size=(64, 96), seed=0)
    assert dm.classes == CLASSES and dm.num_classes == 5 and dm.ignore_index == 255
    assert dm.palette == PALETTE and len(dm.mean) == 3 and dm.std[0] == pytest.approx(58.395)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, 64, 96)
    assert b["mask"].dtype == torch.int64 and b["mask"].shape == (4, 64, 96)
    assert isinstance(b["path"], list) and len(b["path"]) == 4 and b["path"][0].endswith(".png")
    assert set(b["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    assert abs(b["image"].mean().item()) < 2  # normalised, not 0-255
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (1, 3, SIZE, SIZE) and v["mask"].dtype == torch.int64  # demo scenes: 64x64
    # de-normalising with mean/std gives the original uint8 image back (val is unaugmented)
    raw = FolderDataset(demo, "val")[0]["image"]
    back = v["image"][0].permute(1, 2, 0) * torch.tensor(dm.std) + torch.tensor(dm.mean)
    np.testing.assert_allclose(back.numpy(), raw, atol=1e-3)


def test_val_batches_of_mixed_sizes_are_padded_with_ignore(tmp_path):
    folder_tree(tmp_path, "val", n=1, size=(20, 30), classes=["a", "b", "c"])
    write_rgb(tmp_path / "val/images/z.png", np.zeros((26, 18, 3), np.uint8))
    write_mask(tmp_path / "val/masks/z.png", np.ones((26, 18), np.uint8))
    dm = SegDataModule("folder", str(tmp_path), val_split="val", val_batch_size=2, num_workers=0, val_mode="full")
    b = next(iter(dm.val_dataloader()))
    assert b["image"].shape == (2, 3, 26, 30)
    assert (b["mask"][1, :, 18:] == 255).all() and (b["mask"][1, :, :18] == 1).all()
    assert (b["mask"][0, 20:] == 255).all()


def test_decode_cache_and_gpu_loader_defaults(demo, tmp_path):
    kw = dict(batch_size=4, crop_size=(64, 96), seed=0)
    plain = SegDataModule("folder", str(demo), num_workers=0, **kw)
    cached = SegDataModule("folder", str(demo), num_workers=0, cache_dir=str(tmp_path / "cache"), **kw)
    a, b = plain.dataset("train"), cached.dataset("train")
    assert a.cache is None and b.cache is not None and cached.dataset("val").cache is not None
    for i in (0, 5):  # cached samples are the same tensors (same seed -> same augmentation)
        a.reseed(i)
        b.reseed(i)
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["mask"], sb["mask"])
    assert len(list((tmp_path / "cache").glob("*/*.bin"))) == 4
    dl = SegDataModule("folder", str(demo), num_workers=2, **kw).train_dataloader()
    assert dl.persistent_workers and dl.prefetch_factor == 4
    assert dl.pin_memory == torch.cuda.is_available()


def test_val_loader_uses_unpadded_sampler_under_ddp(monkeypatch, demo):
    monkeypatch.setattr(dm_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dm_module.dist, "get_world_size", lambda: 7)
    monkeypatch.setattr(dm_module.dist, "get_rank", lambda: 6)
    dm = SegDataModule("folder", str(demo), num_workers=0)
    dl = dm.val_dataloader()
    assert isinstance(dl.sampler, UnpaddedDistributedSampler)
    assert list(dl.sampler) == list(range(6, 60, 7)) and len(dl) == 8  # 60 val images, no padding


def test_constructible_from_yaml_like_lightningcli(demo):
    from jsonargparse import ArgumentParser

    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(SegDataModule, "data")
    cfg = p.parse_string(
        f"data:\n  dataset: folder\n  root: {demo}\n  crop_size: [64, 64]\n  scale_range: [0.5, 2.0]\n"
        "  palette: [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]\n  val_mode: full\n  num_workers: 0\n"
    )
    dm = p.instantiate(cfg).data
    assert isinstance(dm, SegDataModule) and dm.crop_size == (64, 64) and dm.palette[4] == (4, 4, 4)
    with pytest.raises(Exception, match="pascal"):
        p.parse_string("data:\n  dataset: pascal\n")


def test_base_size_is_refused_with_the_scale_to_write(demo):
    """data.base_size (W, H) became data.scale (H, W): an old config fails, naming the value to write."""
    from jsonargparse import ArgumentParser

    with pytest.raises(
        ValueError,
        match=re.escape("data.base_size (W, H) was replaced by data.scale (H, W): write data.scale: [512, 2048]"),
    ):
        SegDataModule("ade20k", "never/read", base_size=(2048, 512))
    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(SegDataModule, "data")
    cfg = p.parse_string(f"data:\n  dataset: folder\n  root: {demo}\n  base_size: [2048, 1024]\n")
    with pytest.raises(ValueError, match=re.escape("write data.scale: [1024, 2048]")):
        p.instantiate(cfg)
    dm = SegDataModule("folder", str(demo), num_workers=0, scale=(64, 96))
    assert dm.scale == (64, 96) and dm.hparams.scale == (64, 96) and "base_size" not in dm.hparams


def test_upgrade_data_hparams_turns_base_size_into_scale(demo):
    """The data settings of checkpoints written before (base_size (W, H)) become today's arguments."""
    old = {"dataset": "ade20k", "root": "r", "crop_size": [512, 512], "base_size": [2048, 512], "val_mode": "resize"}
    new = upgrade_data_hparams(old)
    assert new == {
        "dataset": "ade20k",
        "root": "r",
        "crop_size": [512, 512],
        "val_mode": "resize",
        "scale": (512, 2048),
    }
    assert old["base_size"] == [2048, 512]  # the input is left as it was
    assert upgrade_data_hparams({"dataset": "folder", "base_size": None}) == {"dataset": "folder"}
    with pytest.raises(ValueError, match="both base_size"):
        upgrade_data_hparams({"base_size": [2048, 1024], "scale": [1024, 2048]})
    dm = SegDataModule(**upgrade_data_hparams({"dataset": "folder", "root": str(demo), "base_size": [96, 64]}))
    assert dm.scale == (64, 96)
    assert upgrade_data_hparams(dict(dm.hparams)) == dict(dm.hparams)  # today's settings: unchanged


def _hash_tree(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _ensure(root: str) -> str:
    return str(ensure_demo_data(root))


def test_demo_data_deterministic_concurrent_and_context_dependent(demo, tmp_path):
    meta = json.loads((demo / "classes.json").read_text())
    assert meta["classes"] == CLASSES
    train, val = FolderDataset(demo, "train"), FolderDataset(demo, "val")
    assert len(train) == 300 and len(val) == 60
    # two processes generating the same root at once: both succeed and see one complete dataset
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        roots = pool.map(_ensure, [str(tmp_path / "d")] * 2)
    assert roots == [str(tmp_path / "d")] * 2
    assert _hash_tree(tmp_path / "d") == _hash_tree(demo)  # deterministic
    assert not list(tmp_path.glob(".d.*"))  # temp folders cleaned up
    # lake and pool share one texture (so only the far ground tells them apart); grass/concrete do not
    pix = {k: [] for k in range(5)}
    for i in range(0, 300, 10):
        s = train[i]
        for k in range(5):
            pix[k].append(s["image"][s["mask"] == k].reshape(-1, 3))
    mean = {k: np.concatenate(v).astype(np.float64).mean(0) for k, v in pix.items()}
    assert np.abs(mean[3] - mean[4]).max() < 10  # one water body per scene: the brightness jitter shows
    assert np.abs(mean[1] - mean[2]).max() > 40
    counts = np.bincount(np.concatenate([train[i]["mask"].ravel() for i in range(0, 300, 10)]), minlength=5)
    assert (counts[:5] / counts.sum() > 0.02).all()  # every class present in quantity


def test_demo_root_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(Exception, match="not seg demo data"):
        ensure_demo_data(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "x"


def test_generate_demo_flag(tmp_path):
    dm = SegDataModule("folder", str(tmp_path / "demo"), generate_demo=str(tmp_path / "demo"), num_workers=0)
    assert dm.num_classes == 5 and (tmp_path / "demo" / "val" / "images").is_dir()
