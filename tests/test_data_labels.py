"""Masks right the first time: binary masks exported as 0/255 (a class hidden as ignore), label maps
(``data.label_map``, ``data.reduce_zero_label``) everywhere masks are decoded, splits without a labelled pixel, and
what ordinary ignore (outlines, void regions) must not set off."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import folder_tree, tiny_config, write_mask, write_rgb

from seg.data import DataError, FolderDataset, SegDataModule
from seg.data.check import main as check_main
from seg.training.cli import main as train_main

CLASSES = ["background", "lesion"]


def binary_tree(root: Path, splits: dict[str, int], size: tuple[int, int] = (48, 64), value: int = 255) -> Path:
    """Lesion-like discs stored as `value` on 0, one per image (what annotation tools export), and classes.json
    [background, lesion]. The discs are brighter than the background, so a network can learn them."""
    h, w = size
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for i in range(n):
            mask = np.zeros((h, w), np.uint8)
            cv2.circle(mask, (int(rng.integers(12, w - 12)), int(rng.integers(12, h - 12))), 9, value, -1)
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            img[mask == value] += 150
            write_rgb(root / split / "images" / f"s{i}.png", img)
            write_mask(root / split / "masks" / f"s{i}.png", mask)
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    return root


def stored_masks(root: Path, split: str) -> list[np.ndarray]:
    """The masks as stored, read by PIL (independently of seg's decoders)."""
    from PIL import Image

    return [np.array(Image.open(p)) for p in sorted((root / split / "masks").glob("*.png"))]


# -- case 1: 0/255 binary masks ------------------------------------------------------------------------------------


def test_check_flags_0_255_binary_masks_with_the_label_map_fix(tmp_path, capsys):
    root = binary_tree(tmp_path / "d", {"train": 5})
    assert check_main(["--root", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "class 'lesion' (1) has no pixel in the 5 mask(s) read" in out
    assert "data.label_map: {255: 1}" in out and "--label_map 255:1" in out
    assert "--data.allow_missing_classes=true" in out and f"{root}/train/masks/s" in out
    assert "no problems found" not in out

    assert check_main(["--root", str(root), "--split", "train", "--label_map", "255:1"]) == 0
    out = capsys.readouterr().out
    lesion = sum(int((m == 255).sum()) for m in stored_masks(root, "train"))
    line = next(row for row in out.splitlines() if " lesion " in row)
    assert line.split()[0] == "1" and line.endswith(f"({lesion} px)") and "no problems found" in out
    assert check_main(["--root", str(root), "--split", "train", "--allow_missing_classes"]) == 0


def test_check_flags_a_thin_class_hidden_beside_a_single_labelled_class(tmp_path, capsys):
    """Cracks 2 px wide stored as 255: no ignore region, but the labelled pixels hold background only."""
    rng = np.random.default_rng(1)
    for i in range(3):
        mask = np.zeros((40, 40), np.uint8)
        mask[:, 10 + i : 12 + i] = 255
        write_rgb(tmp_path / f"d/train/images/c{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        write_mask(tmp_path / f"d/train/masks/c{i}.png", mask)
    (tmp_path / "d/classes.json").write_text(json.dumps({"classes": ["background", "crack"]}))
    assert check_main(["--root", str(tmp_path / "d")]) == 1
    assert "data.label_map: {255: 1}" in capsys.readouterr().out


def test_ordinary_ignore_is_not_a_hidden_class(tmp_path, capsys):
    """Thin outlines around objects with a class absent from the split, and a void region with every class present
    (Cityscapes' ego vehicle), are ordinary ignore: no problem."""
    rng = np.random.default_rng(2)
    for i in range(4):
        mask = np.zeros((60, 80), np.uint8)
        mask[10:45, 10 + i : 50] = 255  # a 'cat' inside a void outline 6 px wide (VOC's are about 5)
        mask[16:39, 16 + i : 44] = 1
        write_rgb(tmp_path / f"outlines/train/images/o{i}.png", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
        write_mask(tmp_path / f"outlines/train/masks/o{i}.png", mask)
    (tmp_path / "outlines/classes.json").write_text(json.dumps({"classes": ["bg", "cat", "dog"]}))
    assert check_main(["--root", str(tmp_path / "outlines")]) == 0
    assert "classes with no pixels: dog" in capsys.readouterr().out

    folder_tree(tmp_path / "void", n=3, size=(40, 48), values=[0, 1, 2, 255], classes=["a", "b", "c"])
    assert check_main(["--root", str(tmp_path / "void")]) == 0  # a quarter of each mask is a void band


def test_train_refuses_0_255_masks_before_the_first_step(tmp_path):
    root = binary_tree(tmp_path / "d", {"train": 6, "val": 3})
    config = tiny_config(tmp_path / "cfg.yaml", root, tmp_path / "run")
    with pytest.raises(DataError, match=r"'lesion' \(1\) has no pixel .*data\.label_map: \{255: 1\}") as err:
        train_main(["--config", str(config)])
    assert "--data.allow_missing_classes=true" in str(err.value) and f"{root}/train" in str(err.value)
    assert not (tmp_path / "run/checkpoints").exists()
    dm = SegDataModule("folder", str(root), num_workers=0, allow_missing_classes=True)
    dm.setup("fit")  # the flag lets a split that really lacks a class train


def test_train_scans_past_a_first_sample_without_the_rare_class(tmp_path, monkeypatch):
    """A rare class absent from the first masks read is looked for further before a run is refused."""
    from seg.data import labels

    monkeypatch.setattr(labels, "TRAIN_SAMPLE", 2)
    root = binary_tree(tmp_path / "d", {"train": 9, "val": 1}, value=1)
    for i in range(9):  # lesions only in s4; the others background with an ignore disc
        m = np.array(stored_masks(root, "train")[i])
        if i != 4:
            m[m == 1] = 255
        write_mask(root / "train/masks" / f"s{i}.png", m)
    dm = SegDataModule("folder", str(root), num_workers=0)
    dm.setup("fit")
    monkeypatch.setattr(labels, "TRAIN_SAMPLE_MAX", 2)
    with pytest.raises(DataError, match="'lesion' \\(1\\) has no pixel in the 2 mask"):
        SegDataModule("folder", str(root), num_workers=0).setup("fit")


# -- case 2: label maps --------------------------------------------------------------------------------------------


def test_label_map_applies_at_decode_with_and_without_the_cache(tmp_path):
    root = binary_tree(tmp_path / "d", {"train": 3})
    expected = [np.where(m == 255, 1, m) for m in stored_masks(root, "train")]  # independent: numpy on PIL's pixels
    plain = FolderDataset(root, "train", label_map={255: 1})
    unmapped = FolderDataset(root, "train")
    unmapped.set_cache(tmp_path / "cache")  # fills the cache with the masks as stored ...
    for i in range(3):
        assert set(np.unique(unmapped.load(i)[1])) == {0, 255}
    cached = FolderDataset(root, "train", label_map={255: 1})
    cached.set_cache(tmp_path / "cache")  # ... which a mapped dataset reads and maps
    for i in range(3):
        np.testing.assert_array_equal(plain.load(i)[1], expected[i])
        np.testing.assert_array_equal(cached.load(i)[1], expected[i])
    dm = SegDataModule("folder", str(root), num_workers=0, label_map={255: 1}, crop_size=(32, 32), train_split="train")
    batch = next(iter(dm.train_dataloader()))  # the training crop reads rows through the same mapping
    assert 1 in batch["mask"].unique().tolist()


def test_reduce_zero_label_reads_ade_style_masks(tmp_path):
    folder_tree(tmp_path / "d", n=2, size=(24, 32), values=[0, 1, 2, 3, 255], classes=["a", "b", "c"])
    ds = FolderDataset(tmp_path / "d", "train", reduce_zero_label=True)
    for i, stored in enumerate(stored_masks(tmp_path / "d", "train")):
        expected = np.where((stored == 0) | (stored == 255), 255, stored.astype(int) - 1)  # mmseg's rule
        np.testing.assert_array_equal(ds.load(i)[1], expected)
    with pytest.raises(DataError, match=r"mask values 4 are neither a class nor ignore \(classes 1\.\.3, ignore 0"):
        folder_tree(tmp_path / "e", n=1, values=[0, 4], classes=["a", "b", "c"])
        FolderDataset(tmp_path / "e", "train", reduce_zero_label=True).load(0)


def test_label_map_entries_are_checked_where_they_are_given(tmp_path):
    root = binary_tree(tmp_path / "d", {"train": 1})
    with pytest.raises(DataError, match=r"label_map \{255: 7\}: 7 is neither a class index \(0\.\.1\) nor 255"):
        SegDataModule("folder", str(root), label_map={255: 7})
    with pytest.raises(DataError, match="reduce_zero_label is for folder datasets"):
        SegDataModule("ade20k", str(root), reduce_zero_label=True)
    with pytest.raises(DataError, match="colour masks are mapped by the palette"):
        FolderDataset(root, "train", palette=[(0, 0, 0), (255, 255, 255)], label_map={255: 1})


def test_label_map_trains_binary_masks_and_travels_in_the_checkpoint(tmp_path):
    """With data.label_map: {255: 1} the run trains, the checkpoint records the mapping, and seg.evaluate --ckpt
    reads the masks with it (lesion scored, not NaN)."""
    from seg.evaluate import evaluate_checkpoint

    root = binary_tree(tmp_path / "d", {"train": 6, "val": 3})
    config = tiny_config(tmp_path / "cfg.yaml", root, tmp_path / "run", max_steps=3)
    train_main(["--config", str(config), "--data.label_map={255: 1}"])
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    data = torch.load(ckpt, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    assert data["label_map"] == {255: 1}
    result, scores = evaluate_checkpoint(ckpt, trainer={"accelerator": "cpu", "enable_progress_bar": False})
    lesion = sum(int((m == 255).sum()) for m in stored_masks(root, "val"))
    assert int(scores.confmat[1].sum()) == lesion  # every lesion pixel scored as lesion ground truth
    assert result["per_class_IoU"]["lesion"] == result["per_class_IoU"]["lesion"]  # a number, not NaN


# -- case 3: no labelled pixel ---------------------------------------------------------------------------------------


def test_train_refuses_all_ignore_training_masks(tmp_path):
    folder_tree(tmp_path / "d", "train", n=4, values=[255], classes=["a", "b"])
    folder_tree(tmp_path / "d", "val", n=2, values=[0, 1], classes=["a", "b"])
    config = tiny_config(tmp_path / "cfg.yaml", tmp_path / "d", tmp_path / "run")
    with pytest.raises(DataError, match=rf"{tmp_path / 'd'}/train: no labelled pixel in the 4 mask\(s\) read"):
        train_main(["--config", str(config)])
    assert not (tmp_path / "run/checkpoints").exists()
    with pytest.raises(DataError, match="no labelled pixel"):  # allow_missing_classes does not pass this one
        SegDataModule("folder", str(tmp_path / "d"), num_workers=0, allow_missing_classes=True).setup("fit")


def test_all_ignore_validation_stops_naming_the_split_without_a_best_checkpoint(tmp_path):
    folder_tree(tmp_path / "d", "train", n=4, values=[0, 1], classes=["a", "b"])
    folder_tree(tmp_path / "d", "val", n=2, values=[255], classes=["a", "b"])
    config = tiny_config(tmp_path / "cfg.yaml", tmp_path / "d", tmp_path / "run", max_steps=4, val_check_interval=2)
    with pytest.raises(DataError, match=r"validation split 'val' of .* \(2 images\) saw no labelled pixel"):
        train_main(["--config", str(config)])
    assert not (tmp_path / "run/checkpoints/best.ckpt").exists()
    assert not (tmp_path / "run/summary.json").exists()


def test_summary_json_writes_nan_metrics_as_null(tmp_path):
    """A class absent from validation has IoU NaN; summary.json stays valid JSON (null), as seg.compare reads it."""
    from types import SimpleNamespace

    from seg.training.summary import RunSummary

    nan = float("nan")
    last = {"mIoU": 0.5, "per_class_IoU": {"a": 0.5, "b": nan}, "step": 3}
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), global_step=3, max_steps=6)
    module = SimpleNamespace(hparams={}, device=torch.device("cpu"), model=torch.nn.Linear(2, 2))
    RunSummary(str(tmp_path))._write(trainer, module, last)

    def refuse(name: str) -> None:
        raise AssertionError(f"summary.json holds {name}, which is not JSON")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert summary["last"]["per_class_IoU"] == {"a": 0.5, "b": None}
