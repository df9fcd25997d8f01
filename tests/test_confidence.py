"""``seg.predict --confidence / --save_probs``: per-pixel max probability and normalised entropy heat maps and the
probabilities as .npy, equal on the PyTorch and ONNX Runtime paths (whole image with a test-scale resize; slide
windows with scales and flip, torch blocked), checked against a by-hand numpy computation on the API's
probabilities; without the flags nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from helpers import TINY_BACKBONE, run_cmd_without_torch, write_rgb
from PIL import Image

import seg
from seg import export as export_cmd
from seg import predict as predict_cmd
from seg.deploy.colormaps import COLORMAPS
from seg.deploy.outputs import confidence_maps, output_stems
from seg.models import build_model, save_checkpoint
from seg.models.checkpoint import checkpoint_meta

onnx = pytest.importorskip("onnx", reason="the export extra (pip install -e '.[export]'); CI installs it")

CLASSES = ["road", "car", "tree", "sky", "lake"]
PALETTE = [(128, 64, 128), (0, 0, 142), (107, 142, 35), (70, 130, 180), (0, 80, 160)]
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
TEST_SCALE = (40, 56)  # (H, W): a 45x61 image is resized to 40x54 before the network (whole mode)
TTA = {"mode": "slide", "crop_size": [32, 32], "stride": [20, 20], "scales": [0.75, 1.0], "flip": True}
TTA_FLAGS = ["--mode", "slide", "--crop_size=[32,32]", "--stride=[20,20]"]  # + scales and flip: torch flags, ONNX file
IMAGES = {"street.png": (45, 61), "field.jpg": (37, 50), "field.png": (33, 47)}  # one stem twice: whole names
STEMS = {"street.png": "street", "field.jpg": "field.jpg", "field.png": "field.png"}


def tiny_checkpoint(path: Path) -> Path:
    """A 5-class FCN on the tiny ResNet-18 (random weights; logits spread so the max probability spans ~0.25..0.9)."""
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", 5, aux=False, backbone_kwargs=TINY_BACKBONE, weights=None, channels=16)
    with torch.no_grad():
        model.head.conv_seg.weight.mul_(300)
    meta = checkpoint_meta(model.build_args, CLASSES, PALETTE, MEAN, STD, test_scale=TEST_SCALE)
    return save_checkpoint(model, path, meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Odd-sized images, the checkpoint (whole image, test scale), its ONNX export (one: exporting takes ~15 s) and
    a copy whose metadata says scales [0.75, 1] and flip, as seg.export records a checkpoint's TTA settings."""
    tmp = tmp_path_factory.mktemp("confidence")
    rng = np.random.default_rng(0)
    for name, (h, w) in IMAGES.items():
        write_rgb(tmp / "images" / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = {"images": tmp / "images", "whole": tiny_checkpoint(tmp / "model.ckpt"), "whole_onnx": tmp / "whole.onnx"}
    export = ["--ckpt", str(out["whole"]), "--format", "onnx", "--out", str(out["whole_onnx"]), "--dynamic"]
    export_cmd.main([*export, "--size=[48,48]"])
    model = onnx.load(str(out["whole_onnx"]))
    for prop in model.metadata_props:
        if prop.key in ("seg.scales", "seg.flip"):
            prop.value = json.dumps(TTA[prop.key[4:]])
    out["tta_onnx"] = tmp / "tta.onnx"
    onnx.save(model, str(out["tta_onnx"]))
    return out


def predict(tmp: Path, model: list[str], images: Path, *flags: str) -> Path:
    predict_cmd.main([*model, str(images), "--out", str(tmp), *flags])
    return tmp


@pytest.fixture(scope="module")
def torch_run(files, tmp_path_factory) -> Path:
    """seg.predict --ckpt (whole) --confidence --save_probs."""
    out = tmp_path_factory.mktemp("torch_whole")
    return predict(out, ["--ckpt", str(files["whole"])], files["images"], "--confidence", "--save_probs")


def lut_index(png: Path, cmap: str) -> np.ndarray:
    """A heat map's (H, W) colour-map indices: the nearest LUT entry of each pixel (all are exact entries)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)  # (H, W, 3)
    lut = COLORMAPS[cmap].astype(np.int32)  # (256, 3)
    dist = ((rgb[:, :, None, :] - lut[None, None]) ** 2).sum(-1)  # (H, W, 256)
    assert (dist.min(-1) == 0).all(), f"{png}: a colour that is not in the {cmap} table"
    return dist.argmin(-1)


def test_the_colour_tables_are_matplotlibs():
    for name, lut in COLORMAPS.items():
        expected = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255  # (256, 3) float
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert np.abs(lut - expected).max() <= 0.5 + 1e-9, name


@pytest.mark.parametrize("settings", ["whole", "tta"])
def test_pytorch_and_onnx_write_the_same_maps(settings, files, torch_run, tmp_path):
    """Whole: the checkpoint's test-scale resize (logits resized to the image before the softmax on both paths);
    tta: slide windows x scales [0.75, 1] x flip, the ONNX path in a process that cannot import torch."""
    if settings == "whole":
        ref = torch_run
        out_onnx = predict(tmp_path / "onnx", ["--onnx", str(files["whole_onnx"])], files["images"], "--confidence")
        predict_cmd.main(
            ["--onnx", str(files["whole_onnx"]), str(files["images"]), "--out", str(out_onnx), "--save_probs"]
        )
    else:
        tta = [*TTA_FLAGS, "--scales=[0.75,1.0]", "--flip", "true", "--confidence", "--save_probs"]
        ref = predict(tmp_path / "torch", ["--ckpt", str(files["whole"])], files["images"], *tta)
        out_onnx = tmp_path / "onnx"
        args = [
            "--onnx",
            str(files["tta_onnx"]),
            str(files["images"]),
            "--out",
            str(out_onnx),
            *TTA_FLAGS,
            "--confidence",
        ]
        proc = run_cmd_without_torch([*args, "--save_probs"])
        assert proc.returncode == 0 and "no PyTorch" in proc.stdout, proc.stderr[-3000:]
    for name, (h, w) in IMAGES.items():
        stem = STEMS[name]
        probs, probs_onnx = np.load(ref / f"{stem}_probs.npy"), np.load(out_onnx / f"{stem}_probs.npy")
        assert probs.shape == probs_onnx.shape == (5, h, w) and probs_onnx.dtype == np.float32
        np.testing.assert_allclose(probs_onnx, probs, atol=1e-4)
        for suffix, cmap in (("_confidence.png", "viridis"), ("_entropy.png", "magma")):
            a, b = lut_index(ref / f"{stem}{suffix}", cmap), lut_index(out_onnx / f"{stem}{suffix}", cmap)
            assert a.shape == (h, w) and np.abs(a - b).max() <= 1, (name, suffix)
            assert a.max() - a.min() > 50, "near-constant maps would make this comparison vacuous"
    for legend in ("legend.png", "confidence_legend.png", "entropy_legend.png"):
        assert Image.open(out_onnx / legend).size == Image.open(ref / legend).size


def test_the_maps_are_the_apis_probabilities_by_hand(files, torch_run):
    """max_c p and -sum_c p log p / log 5 computed here in float64 from seg.load(...).predict(path, output='probs')
    are the heat maps' colour-table indices (round(255 v), +-1 for float32 rounding at a .5); the .npy is the API's
    probabilities, and its argmax is the written mask."""
    model = seg.load(files["whole"], device="cpu")
    for name in IMAGES:
        stem = STEMS[name]
        probs = model.predict(files["images"] / name, output="probs")  # (5, H, W) float32
        saved = np.load(torch_run / f"{stem}_probs.npy")
        np.testing.assert_allclose(saved, probs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(torch_run / f"{stem}.png")), saved.argmax(0))
        p = probs.astype(np.float64)
        max_prob = p.max(0)
        entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(0) / np.log(5)
        for values, suffix, cmap in ((max_prob, "_confidence.png", "viridis"), (entropy, "_entropy.png", "magma")):
            png = torch_run / f"{stem}{suffix}"
            expected = np.clip(np.rint(values * 255), 0, 255).astype(int)  # (H, W) colour-table index
            assert np.abs(lut_index(png, cmap) - expected).max() <= 1, (name, suffix)
            same = (np.asarray(Image.open(png)) == COLORMAPS[cmap][expected]).all(-1)  # viridis repeats 2 colours
            assert same.mean() > 0.99, (name, suffix)
        api_max, api_entropy = seg.confidence_maps(probs)  # the helper the commands use
        np.testing.assert_allclose(api_max, max_prob, atol=1e-6)
        np.testing.assert_allclose(api_entropy, entropy, atol=1e-5)


def test_saved_probabilities_sum_to_one(torch_run):
    for name, (h, w) in IMAGES.items():
        probs = np.load(torch_run / f"{STEMS[name]}_probs.npy")
        assert probs.shape == (5, h, w) and probs.dtype == np.float32 and probs.min() >= 0
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


def test_without_the_flags_nothing_changes(files, torch_run, tmp_path):
    """The outputs of a plain run are the three per image and legend.png, with the masks of the --confidence run."""
    out = predict(tmp_path / "plain", ["--ckpt", str(files["whole"])], files["images"])
    expected = {f"{s}{x}" for s in STEMS.values() for x in (".png", "_color.png", "_overlay.jpg")} | {"legend.png"}
    assert {p.name for p in out.iterdir()} == expected
    extra = {f"{s}{x}" for s in STEMS.values() for x in ("_confidence.png", "_entropy.png", "_probs.npy")}
    assert {p.name for p in torch_run.iterdir()} == expected | extra | {"confidence_legend.png", "entropy_legend.png"}
    for stem in STEMS.values():
        np.testing.assert_array_equal(Image.open(out / f"{stem}.png"), Image.open(torch_run / f"{stem}.png"))


def test_confidence_names_join_the_clash_rule_only_when_written():
    images = [Path("a.jpg"), Path("a_entropy.png"), Path("entropy_legend.jpg")]
    assert output_stems(images) == {p: p.stem for p in images}
    stems = output_stems(images, ("_confidence.png", "_entropy.png"), ("confidence_legend.png", "entropy_legend.png"))
    assert stems == {p: p.name for p in images}


def test_confidence_maps_of_certain_uniform_and_bad_inputs():
    c = 4
    uniform, onehot = np.full((c, 2, 3), 1 / c, np.float32), np.eye(c, dtype=np.float32)[:, :, None]  # (4, 4, 1)
    for probs, (max_prob, entropy) in ((uniform, (1 / c, 1.0)), (onehot, (1.0, 0.0)), (np.ones((1, 2, 2)), (1, 0))):
        got_max, got_entropy = confidence_maps(probs)
        assert got_max.shape == got_entropy.shape == probs.shape[1:] and got_entropy.dtype == np.float32
        np.testing.assert_allclose(got_max, max_prob, atol=1e-6)
        np.testing.assert_allclose(got_entropy, entropy, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected probabilities .* not logits"):
        confidence_maps(np.array([[3.0, -2.0]]))


def test_an_onnx_file_of_labels_refuses_confidence_in_two_lines(files, tmp_path, capsys):
    """A file exported with --argmax has no probabilities (its metadata says so: rewritten here, not re-exported)."""
    model = onnx.load(str(files["whole_onnx"]))
    for prop in model.metadata_props:
        if prop.key == "seg.output":
            prop.value = json.dumps("labels")
    onnx.save(model, str(tmp_path / "labels.onnx"))
    for flag in ("--confidence", "--save_probs"):
        with pytest.raises(SystemExit) as exit_info:
            predict_cmd.main(
                ["--onnx", str(tmp_path / "labels.onnx"), str(files["images"]), "--out", str(tmp_path / "x"), flag]
            )
        err = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2 and len(err) == 2 and flag in err[0] and "without --argmax" in err[0], err
    assert not (tmp_path / "x").exists()
