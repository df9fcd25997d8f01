"""Input images, one rule everywhere: EXIF orientation (training, the cache, the fast PNG path, evaluation, both
predict paths and seg.data.check agree on the displayed layout), one extension list with distinct output names,
and a predict run that skips an unreadable or oversized file, writes the rest and exits 1.

The ONNX path runs a hand-built model (`colour_onnx`: logits = the RGB channels), so the expected mask of any image
is its strongest channel per pixel, computed here with numpy; the PyTorch path runs the `trained_run` checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import bomb_png, run_cmd_without_torch, write_mask
from PIL import Image, ImageOps

from seg import evaluate as evaluate_cmd
from seg import predict as predict_cmd
from seg.data import FolderDataset
from seg.data import base as base_module
from seg.data import check as check_cmd
from seg.data import png as png_module
from seg.deploy import metadata, onnx_predict

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # classes 0, 1, 2 of `colour_onnx`
# EXIF orientation -> the displayed image, from the stored one (EXIF 2.32, section 4.6.5 "Orientation")
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def stored_pattern(h: int = 40, w: int = 56) -> np.ndarray:
    """Red with a green corner and a blue quarter: no two of the eight orientations give the same array."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = RED
    a[: h // 4, : w // 4] = GREEN
    a[h // 2 :, w // 2 :] = BLUE
    return a


def write_photo(path: Path, stored: np.ndarray, orientation: int) -> Path:
    """An image file with an EXIF block as a phone writes it (make, model, orientation), written by PIL."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Phone", "Model X", orientation
    kwargs = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}
    fmt = Image.registered_extensions()[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, fmt, exif=exif, **kwargs.get(fmt, {}))
    return path


def labels(rgb: np.ndarray) -> np.ndarray:
    return rgb.argmax(axis=2).astype(np.uint8)  # (H, W): what `colour_onnx` predicts


@pytest.fixture(scope="module")
def colour_onnx(tmp_path_factory) -> Path:
    """An ONNX model built by hand (no torch, no export): a 1x1 identity convolution, so the logits of a pixel are
    its R, G, B values (mean 0, std 1) and red / green / blue pixels are classes 0 / 1 / 2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])],
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    meta = {
        "num_classes": 3,
        "palette": [list(RED), list(GREEN), list(BLUE)],
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "normalize_baked": False,
        "output": "logits",
        "dynamic": True,
        "traced_size": [8, 8],
        "test_scale": None,
        "eval_mode": "whole",
        "crop_size": [8, 8],
        "stride": [8, 8],
        "scales": [1.0],
        "flip": False,
    }
    helper.set_model_props(model, metadata.encode(meta))
    path = tmp_path_factory.mktemp("onnx") / "colour.onnx"
    onnx.save(model, str(path))
    return path


def read_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))  # predicted masks are palette PNGs: PIL gives the indices


# ------------------------------------------------------------------------------------------------
# case 4: EXIF orientation


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_training_decodes_every_orientation_as_displayed(ext, tmp_path):
    """read_image (training, validation, the decode cache) returns the displayed layout for all eight orientations
    of every format that carries one; the fast PNG path gives way to OpenCV for an oriented PNG."""
    stored = stored_pattern()
    for orientation, displayed in DISPLAYED.items():
        path = write_photo(tmp_path / f"o{orientation}{ext}", stored, orientation)
        assert Image.open(path).getexif().get(0x0112) == orientation  # PIL reads back what was written
        img = base_module.read_image(path)
        expected = displayed(stored)
        assert img.shape == expected.shape, (ext, orientation)
        if ext == ".jpg":  # lossy: the colour blocks survive, not every bit
            assert np.abs(img.astype(int) - expected).max() <= 8, orientation
            np.testing.assert_array_equal(labels(img), labels(expected))
        else:
            np.testing.assert_array_equal(img, expected, err_msg=f"{ext} orientation {orientation}")


def test_fast_png_paths_leave_oriented_pngs_to_opencv(tmp_path):
    """seg.data.png (whole file and rows down to the crop) must not hand the stored layout to training."""
    if png_module._spng is None or png_module._isal is None:
        pytest.skip("the fast extra (pyspng, isal) is not installed")
    upright = write_photo(tmp_path / "o1.png", stored_pattern(), 1).read_bytes()
    sideways = write_photo(tmp_path / "o6.png", stored_pattern(), 6).read_bytes()
    assert png_module.decode(upright, "RGB") is not None and png_module.open_rows(upright, "RGB") is not None
    assert png_module.decode(sideways, "RGB") is None and png_module.open_rows(sideways, "RGB") is None
    assert png_module.decode(sideways, "mask") is not None  # masks are read as stored


def _phone_dataset(root: Path, size=(40, 56), orientation: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """{root}/val: one phone photo (stored `size`, EXIF `orientation`) and its mask in the displayed layout."""
    stored = stored_pattern(*size)
    shown = DISPLAYED[orientation](stored)
    mask = labels(shown)
    write_photo(root / "val/images/phone.jpg", stored, orientation)
    write_mask(root / "val/masks/phone.png", mask)
    return shown, mask


def test_dataset_and_cache_read_a_phone_photo_as_displayed(tmp_path, monkeypatch):
    shown, mask = _phone_dataset(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", "val", classes=["red", "green", "blue"])
    image, decoded_mask = ds.load(0)  # the mask follows the displayed layout: sizes agree
    assert image.shape == (56, 40, 3) and decoded_mask.shape == (56, 40)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "d/val/images/phone.jpg")).convert("RGB"))
    assert np.abs(image.astype(int) - reference).max() <= 2  # PIL's decoder and rotation, not ours
    ds.set_cache(tmp_path / "cache")
    ds.load(0)  # stores the decoded image
    monkeypatch.setattr(base_module, "read_image", lambda p: pytest.fail(f"decoded {p} again"))
    np.testing.assert_array_equal(ds.load(0)[0], image)  # the cache holds the displayed layout too


def test_predict_writes_masks_of_the_displayed_size_on_both_paths(colour_onnx, trained_run, tmp_path):
    """The issue's case: a 56x40 (W x H) JPEG with Orientation 6 is shown 40 wide and 56 high; both predict paths
    write a 56 x 40 (H x W) mask, the ONNX one equal to the displayed pixels' classes. The same for a TIFF, which
    predict's former reader (``cv2.imread``) could not open at all when it carried an orientation (OpenCV 5.0)."""
    shown, _ = _phone_dataset(tmp_path / "d")
    images = tmp_path / "d/val/images"
    write_photo(images / "scan.tif", stored_pattern(), 6)
    onnx_predict.main(["--onnx", str(colour_onnx), str(images), "--out", str(tmp_path / "onnx")])
    for name in ("phone", "scan"):
        np.testing.assert_array_equal(read_label(tmp_path / f"onnx/{name}.png"), labels(shown), err_msg=name)
    ckpt = trained_run / "checkpoints/best.ckpt"
    written = predict_cmd.main(["--ckpt", str(ckpt), str(images), "--out", str(tmp_path / "torch")])
    assert [read_label(p).shape for p in written] == [(56, 40), (56, 40)]


def test_evaluation_and_prediction_agree_on_a_phone_photo(trained_run, tiny_data, tmp_path):
    """seg.evaluate scores the photo against its displayed-layout mask (before: a size-mismatch error), and
    seg.predict's mask of that photo scores exactly what evaluation reports."""
    root = tmp_path / "phone"
    _phone_dataset(root)  # mask values 0..2: classes of the 5-class run
    shutil.copy(tiny_data / "classes.json", root / "classes.json")
    ckpt = str(trained_run / "checkpoints/best.ckpt")
    metrics = evaluate_cmd.main(["--ckpt", ckpt, "--data.root", str(root), "--output", str(tmp_path / "m.json")])
    (written,) = predict_cmd.main(["--ckpt", ckpt, str(root / "val/images"), "--out", str(tmp_path / "pred")])
    pred, gt = read_label(written), np.asarray(Image.open(root / "val/masks/phone.png"))
    assert pred.shape == gt.shape == (56, 40)
    assert metrics["aAcc"] == pytest.approx(float((pred == gt).mean()), abs=1e-9)


def test_check_reports_exif_orientation(tmp_path, capsys):
    """A square photo whose mask matches in size passes every other check; the orientation is reported, with the
    layout its mask must follow and how to bake the rotation in."""
    _phone_dataset(tmp_path / "d", size=(48, 48))
    (tmp_path / "d/classes.json").write_text(json.dumps({"classes": ["red", "green", "blue"]}))
    code = check_cmd.main(["--dataset", "folder", "--root", str(tmp_path / "d"), "--split", "val"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "phone.jpg: EXIF orientation 6 (shown rotated 90 degrees clockwise)" in out
    assert "phone.png must follow that layout" in out and "exiftran -ai" in out


# ------------------------------------------------------------------------------------------------
# case 5: one extension list, distinct output names


def _mixed_folder(folder: Path) -> dict[str, tuple[int, int, int]]:
    """x.jpg and x.png (one stem, different colours) and a WebP: input name -> colour."""
    colours = {"x.jpg": RED, "x.png": BLUE, "y.webp": GREEN}
    for name, colour in colours.items():
        rgb = np.empty((12, 20, 3), np.uint8)
        rgb[:] = colour
        write_photo(folder / name, rgb, 1)
    return colours


def test_predict_reads_every_training_extension(colour_onnx, tmp_path):
    """Whatever training reads, predict reads (before: .webp was silently left out)."""
    (tmp_path / "in").mkdir()
    for k, ext in enumerate(base_module.IMAGE_EXTENSIONS):
        rgb = np.full((9, 11, 3), 200, np.uint8)
        rgb[..., k % 3] = 255
        assert cv2.imwrite(str(tmp_path / "in" / f"im{k}{ext}"), rgb[..., ::-1])
    written = onnx_predict.main(["--onnx", str(colour_onnx), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in written) == [f"im{k}.png" for k in range(len(base_module.IMAGE_EXTENSIONS))]
    for k in range(len(base_module.IMAGE_EXTENSIONS)):
        assert (read_label(tmp_path / "out" / f"im{k}.png") == k % 3).all()


@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_stem_collisions_get_distinct_outputs(path, colour_onnx, request, tmp_path):
    colours = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    if path == "onnx":
        written = onnx_predict.main(["--onnx", str(colour_onnx), str(tmp_path / "in"), "--out", str(out)])
    else:
        ckpt = str(request.getfixturevalue("trained_run") / "checkpoints/best.ckpt")
        written = predict_cmd.main(["--ckpt", ckpt, str(tmp_path / "in"), "--out", str(out)])
    assert sorted(p.name for p in written) == ["x.jpg.png", "x.png.png", "y.png"]
    expected = {"x.jpg": "x.jpg", "x.png": "x.png", "y.webp": "y"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "legend.png",
            *(f"{stem}{tail}" for stem in expected.values() for tail in (".png", "_color.png", "_overlay.jpg")),
        ]
    )
    if path == "onnx":  # each mask is its own input's: red -> 0, blue -> 2, green -> 1
        for name, stem in expected.items():
            assert (read_label(out / f"{stem}.png") == labels(np.array([[colours[name]]]))[0, 0]).all(), name


# ------------------------------------------------------------------------------------------------
# case 10: unreadable and oversized files


def _folder_with_bad_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("a.png", "d.jpg"):
        rgb = np.empty((10, 14, 3), np.uint8)
        rgb[:] = GREEN
        write_photo(folder / name, rgb, 1)
    (folder / "b.png").write_bytes(b"")
    (folder / "c.png").write_bytes(bomb_png())


def test_predict_onnx_skips_bad_files_writes_the_rest_and_exits_1(colour_onnx, tmp_path):
    """The real command, torch imports blocked: a 0-byte PNG and a 12000x12000 bomb are skipped with a warning each,
    the two good images are predicted, and the exit status is 1 with both bad files listed."""
    _folder_with_bad_files(tmp_path / "in")
    proc = run_cmd_without_torch(["--onnx", str(colour_onnx), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "wrote 2 masks" in proc.stdout and "no PyTorch" in proc.stdout
    err = proc.stderr
    assert f"warning: skipping {tmp_path / 'in/b.png'}: empty file" in err
    assert f"warning: skipping {tmp_path / 'in/c.png'}: 12000x12000" in err and "--max_pixels 144000000" in err
    assert "2 of 4 images could not be read" in err and "Traceback" not in err
    for stem in ("a", "d"):
        assert (read_label(tmp_path / f"out/{stem}.png") == 1).all()
    assert not (tmp_path / "out/b.png").exists() and not (tmp_path / "out/c.png").exists()


def test_predict_torch_skips_bad_files_and_writes_the_rest(trained_run, tmp_path, capsys):
    _folder_with_bad_files(tmp_path / "in")
    ckpt = str(trained_run / "checkpoints/best.ckpt")
    with pytest.raises(RuntimeError, match="2 of 4 images could not be read") as info:
        predict_cmd.main(["--ckpt", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in info.value.written) == ["a.png", "d.png"]
    assert all(read_label(p).shape == (10, 14) for p in info.value.written)
    assert sorted(p.name for p in info.value.skipped) == ["b.png", "c.png"]
    assert capsys.readouterr().err.count("warning: skipping") == 2


def test_max_pixels_flag_sets_the_limit_on_both_paths(colour_onnx, trained_run, tmp_path):
    """A 10 x 14 image is 140 pixels: refused under --max_pixels 139 (naming the file, its size and the flag),
    predicted under 140."""
    folder = tmp_path / "in"
    write_photo(folder / "a.png", np.zeros((10, 14, 3), np.uint8), 1)
    ckpt = str(trained_run / "checkpoints/best.ckpt")
    runs = {
        "onnx": lambda out, limit: onnx_predict.main(
            ["--onnx", str(colour_onnx), str(folder), "--out", str(out), "--max_pixels", limit]
        ),
        "torch": lambda out, limit: predict_cmd.main(
            ["--ckpt", ckpt, str(folder), "--out", str(out), "--max_pixels", limit]
        ),
    }
    for name, run in runs.items():
        with pytest.raises(
            RuntimeError, match=r"a.png: 14x10 \(W x H\) = 140 pixels, more than --max_pixels 139 .*: --max_pixels 140"
        ):
            run(tmp_path / f"{name}_139", "139")
        assert [p.name for p in run(tmp_path / f"{name}_140", "140")] == ["a.png"]
