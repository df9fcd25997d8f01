"""seg.load_model, the one reader of checkpoints: train.py's checkpoints describe themselves (a copy works with every
command, no run folder read), and the files written before that (train.py's and seg.convert's, committed in
tests/data/legacy by the commit before the change) keep loading and scoring what they scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import network_by_hand, run_cmd

import seg
from seg import evaluate as evaluate_cmd
from seg import export as export_cmd
from seg import predict as predict_cmd
from seg.data.base import default_palette
from seg.data.synthetic import CLASSES, PALETTE
from seg.loading import load_model, read_info
from seg.models.safe_load import CheckpointError

LEGACY = Path(__file__).parent / "data" / "legacy"


def test_checkpoint_of_todays_main_loads_and_scores_what_it_logged(tmp_path):
    ckpt = LEGACY / "train_last.ckpt"
    model, info = seg.load_model(ckpt)
    assert info.kind == "legacy train.py" and info.step == 2
    assert info.classes == list(CLASSES)  # its config named them (no palette: the default one, as it trained with)
    assert info.palette == [tuple(c) for c in default_palette(5)]
    assert info.test_scale == (48, 64)  # its data.base_size was (W, H) = (64, 48)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], network_by_hand(ckpt)(x)["out"], rtol=0, atol=0)
    # the same data again (the val split it validated on, as the demo generator of that commit wrote it):
    # seg.evaluate reproduces the validation it logged
    recorded = json.loads((LEGACY / "README.json").read_text())
    result = evaluate_cmd.main(
        ["--ckpt", str(ckpt), f"--data.root={LEGACY / 'demo48'}", "--output", str(tmp_path / "m.json")]
    )
    assert result["mIoU"] == pytest.approx(recorded["val_mIoU_at_step_2"], abs=1e-9)


def test_converted_checkpoint_of_todays_main_loads():
    model, info = load_model(LEGACY / "converted.ckpt")
    state = torch.load(LEGACY / "converted.ckpt", weights_only=True)
    assert info.kind == "legacy convert" and info.build == state["seg_model"]
    assert info.classes == [f"class_{i}" for i in range(5)] and len(info.palette) == 5
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["state_dict"][f"model.{k}"])


def test_copied_checkpoint_works_with_every_command(trained_run, tmp_path):
    """best.ckpt copied out of its run folder (no config.yaml beside it) into another working directory."""
    copy = tmp_path / "elsewhere" / "model.ckpt"
    copy.parent.mkdir()
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", copy)
    info = read_info(copy)
    assert info.kind == "seg" and info.classes == list(CLASSES) and info.palette == [tuple(c) for c in PALETTE]
    assert info.build["backbone"] == "resnet18" and info.seed == 0 and info.data["dataset"] == "folder"
    raw = torch.load(copy, weights_only=True)["seg"]  # what the file itself says
    assert raw["model"] == info.build and raw["eval"]["mode"] == "whole" and raw["format"] == 1
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    result = evaluate_cmd.main(["--ckpt", str(copy)])  # writes metrics.json beside the copy
    assert result["mIoU"] == best["mIoU"] and (copy.parent / "metrics.json").is_file()
    images = Path(info.data["root"]) / "val" / "images"
    written = predict_cmd.main(["--ckpt", str(copy), str(images), "--out", str(tmp_path / "pred")])
    assert len(written) == best["num_images"]
    out = export_cmd.main(
        ["--ckpt", str(copy), "--format", "exported", "--out", str(tmp_path / "m.pt2"), "--size=[48,48]"]
    )
    assert out["checks"][0]["rel"] <= 1e-4
    # from another directory, as a user would type it
    proc = run_cmd(["-m", "seg.predict", "--ckpt", str(copy), str(images), "--out", str(tmp_path / "pred2")])
    assert "wrote 7 masks" in proc.stdout


def test_not_a_seg_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"not a checkpoint"):
        load_model(path)
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"not a seg checkpoint.*seg\.convert mmseg"):
        load_model(path)
