"""The Python API, ``seg.load(ckpt).predict(image)``: the masks ``seg.predict`` writes, from every input kind, with the
checkpoint's normalisation, test scale and evaluation settings (checked against a by-hand pipeline), clear errors,
and the README's snippet and the module's doctest run as written."""

from __future__ import annotations

import doctest
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, TINY_BACKBONE, write_rgb
from PIL import Image

import seg
import seg.segmenter
from seg import predict as predict_cmd
from seg.deploy.images import ImageError
from seg.models import build_model, save_checkpoint
from seg.models.checkpoint import checkpoint_meta

CLASSES = ["road", "car", "tree", "sky", "lake"]
PALETTE = [(128, 64, 128), (0, 0, 142), (107, 142, 35), (70, 130, 180), (0, 80, 160)]
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
TEST_SCALE = (40, 56)  # (H, W): a 45x61 image is resized to 40x54 before the network
WINDOWS = {"mode": "slide", "crop_size": (40, 40), "stride": (24, 24)}
SLIDE = {**WINDOWS, "scales": [0.75, 1.0, 1.25], "flip": True}
SLIDE_FLAGS = ["--mode", "slide", "--crop_size", "[40, 40]", "--stride", "[24, 24]", "--scales", "[0.75,1.0,1.25]"]


def tiny_checkpoint(path: Path, eval: dict | None = None) -> Path:
    """A 5-class FCN on the tiny ResNet-18 with its own classes, palette, mean/std and test scale (random weights:
    the logits only need to differ between pixels)."""
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", 5, aux=False, backbone_kwargs=TINY_BACKBONE, weights=None, channels=16)
    with torch.no_grad():
        model.head.conv_seg.weight.mul_(30)  # spread the logits: argmaxes far from ties
    meta = checkpoint_meta(model.build_args, CLASSES, PALETTE, MEAN, STD, eval=eval, test_scale=TEST_SCALE)
    return save_checkpoint(model, path, meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The checkpoint and a folder of odd-sized images: 45x61 PNG, 37x50 JPEG, a phone JPEG stored 40x56 with EXIF
    orientation 6 (displayed 56x40)."""
    tmp = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    images = tmp / "images"
    write_rgb(images / "street.png", rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    write_rgb(images / "field.jpg", rng.integers(0, 256, (37, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    phone = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(phone).save(images / "phone.jpg", "JPEG", exif=exif, quality=100, subsampling=0)
    return {"ckpt": tiny_checkpoint(tmp / "model.ckpt"), "images": images, "street": images / "street.png"}


@pytest.fixture(scope="module")
def model(files) -> seg.Segmenter:
    return seg.load(files["ckpt"], device="cpu")


def read_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))  # a palette PNG: PIL reads the indices (OpenCV would give the colours)


@pytest.mark.parametrize("settings", ["checkpoint", "slide+tta"])
def test_predict_equals_the_masks_seg_predict_writes(settings, files, model, tmp_path):
    out = tmp_path / "pred"
    flags, kwargs = ([], {}) if settings == "checkpoint" else ([*SLIDE_FLAGS, "--flip", "true"], SLIDE)
    written = predict_cmd.main(["--ckpt", str(files["ckpt"]), str(files["images"]), "--out", str(out), *flags])
    assert len(written) == 3
    for path in sorted(files["images"].iterdir()):
        mask = model.predict(path, **kwargs)
        expected = read_label(out / f"{path.stem}.png")
        assert mask.shape == expected.shape  # the phone photo: 56 x 40, as displayed
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(model.colorize(mask), cv2.imread(str(out / f"{path.stem}_color.png"))[..., ::-1])
    assert model.predict(files["images"] / "phone.jpg").shape == (56, 40)


def test_checkpoint_normalisation_and_test_scale_against_a_pipeline_by_hand(files):
    """Resize to fit the test scale (mmcv rescale_size, bilinear), (rgb - mean) / std, the network, logits resized
    bilinearly to the image's size, softmax: written out here without seg's transforms or inference code."""
    network, _ = seg.load_model(files["ckpt"])
    rgb = cv2.imread(str(files["street"]))[..., ::-1]
    h, w = rgb.shape[:2]
    factor = min(max(TEST_SCALE) / max(h, w), min(TEST_SCALE) / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))  # (W, H) for cv2
    x = (cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_LINEAR) - np.array(MEAN)) / np.array(STD)
    with torch.no_grad():
        logits = network(torch.from_numpy(x).float().permute(2, 0, 1)[None])["out"]
    expected = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
    for optimize in (False, True):  # True: BN folded, channels_last, as seg.predict runs on CPU
        api = seg.load(files["ckpt"], device="cpu", optimize=optimize)
        probs = api.predict(files["street"], output="probs")
        np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
        np.testing.assert_array_equal(api.predict(files["street"]), expected.argmax(0).numpy())


def test_every_input_kind_gives_the_same_prediction(files, model):
    path = files["street"]
    rgb = cv2.imread(str(path))[..., ::-1].copy()  # (45, 61, 3) RGB uint8
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    reference = model.predict(str(path), output="probs")
    assert isinstance(reference, np.ndarray) and reference.dtype == np.float32 and reference.shape == (5, 45, 61)
    for image in (path, Image.open(path), Image.fromarray(rgb), rgb):
        np.testing.assert_array_equal(model.predict(image, output="probs"), reference)
    for image in (chw, chw[None]):
        probs = model.predict(image, output="probs")
        assert isinstance(probs, torch.Tensor) and probs.device == model.device
        torch.testing.assert_close(probs.reshape(reference.shape), torch.from_numpy(reference), rtol=0, atol=0)
    labels = model.predict([path, rgb, chw])  # a list gives a list, each item typed by its input
    assert [type(m) for m in labels] == [np.ndarray, np.ndarray, torch.Tensor]
    assert labels[0].dtype == np.uint8 and labels[2].dtype == torch.int64
    for m in labels:
        np.testing.assert_array_equal(np.asarray(m), reference.argmax(0))
    labels[2][0, 0] = 0  # an ordinary tensor (not an inference-mode one)
    batch = model.predict(torch.stack([chw, chw.flip(-1), chw]), output="probs", batch_size=2)
    assert batch.shape == (3, 5, 45, 61)
    torch.testing.assert_close(batch[2], torch.from_numpy(reference), atol=1e-5, rtol=0)  # batched: float rounding
    # float pixels in [0, 1] (torchvision's convention): the same image to float rounding (flip: no test-scale
    # resize, whose uint8 rounding would differ)
    tta = model.predict(rgb, flip=True, output="probs")
    for image in (chw.float() / 255, rgb.astype(np.float64) / 255):
        np.testing.assert_allclose(np.asarray(model.predict(image, flip=True, output="probs")), tta, atol=1e-5)


@pytest.mark.parametrize("settings", [{}, SLIDE])
def test_probabilities_sum_to_one_and_their_argmax_is_the_mask(settings, files, model):
    image = files["images"] / "field.jpg"  # 37 x 50
    labels = model.predict(image, **settings)
    probs = model.predict(image, output="probs", **settings)
    assert labels.shape == (37, 50) and probs.shape == (5, 37, 50)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)
    assert len(np.unique(labels)) > 1
    one_pass = {k: v for k, v in settings.items() if k not in ("scales", "flip")}
    logits = model.predict(image, output="logits", **one_pass)
    np.testing.assert_array_equal(logits.argmax(0), model.predict(image, **one_pass))
    if not settings:
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(0).numpy(), probs, atol=1e-6)
    with pytest.raises(ValueError, match=r"output='logits' is one pass's.*output='probs'"):
        model.predict(image, output="logits", flip=True)


def test_colorize_is_the_palette_lookup(model):
    mask = np.arange(5, dtype=np.uint8).repeat(6).reshape(5, 6)  # every class
    expected = np.array([[PALETTE[c] for c in row] for row in mask.tolist()], np.uint8)
    np.testing.assert_array_equal(model.colorize(mask), expected)
    np.testing.assert_array_equal(model.colorize(torch.from_numpy(mask).long()), expected)
    assert model.classes == CLASSES and model.palette == PALETTE and model.info.num_classes == 5
    with pytest.raises(ValueError, match=r"class 7 has no palette colour \(5 colours"):
        model.colorize(np.full((2, 2), 7))
    with pytest.raises(ValueError, match=r"integer class indices, got float32"):
        model.colorize(np.zeros((2, 2), np.float32))


def test_defaults_are_the_checkpoints_evaluation_settings(files, tmp_path):
    api = seg.load(tiny_checkpoint(tmp_path / "slide.ckpt", eval=WINDOWS), device="cpu")  # the same weights
    s = api.eval_settings
    assert (s.mode, s.crop_size, s.stride, s.scales, s.flip) == ("slide", (40, 40), (24, 24), (1.0,), False)
    assert "head='fcn', backbone='resnet18', classes=5, eval='slide', crop_size=(40, 40)" in repr(api)
    whole = seg.load(files["ckpt"], device="cpu")
    street = files["street"]
    slid = api.predict(street, output="probs")
    np.testing.assert_array_equal(slid, whole.predict(street, output="probs", **WINDOWS))
    assert not np.allclose(slid, whole.predict(street, output="probs"), atol=1e-3)  # slide windows do differ here
    np.testing.assert_array_equal(api.predict(street, mode="whole"), whole.predict(street))
    assert api.to("cpu") is api and api.device == torch.device("cpu")


def test_bad_inputs_say_what_is_wrong(files, model, tmp_path):
    cases = [
        (tmp_path / "nope.png", FileNotFoundError, r"no such image file: .*nope\.png"),
        (tmp_path, ImageError, r"is a folder; pass a list of its images"),
        (np.zeros((8, 8), np.uint8), ImageError, r"expected an \(H, W, 3\) RGB image, got shape \(8, 8\); greyscale"),
        (np.zeros((8, 8, 4), np.uint8), ImageError, r"got shape \(8, 8, 4\); RGBA: x\[\.\.\., :3\]"),
        (np.zeros((8, 8, 3), np.int64), ImageError, r"uint8 \(0-255\) or float \(0-1\) pixels, got int64"),
        (np.full((8, 8, 3), 200.0), ImageError, r"float pixels are RGB in \[0, 1\], got values in \[200, 200\]"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), ImageError, r"\(3, H, W\) RGB tensor.*x\.permute\(2, 0, 1\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), ImageError, r"images\[0\]: .*got torch\.int32"),
        (b"\x89PNG", TypeError, r"cannot predict a bytes; pass an image path, a PIL image"),
        ([files["street"], 3], TypeError, r"images\[1\]: cannot predict a int"),
    ]
    for image, error, message in cases:
        with pytest.raises(error, match=message):
            model.predict(image)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"broken\.png: cannot decode image"):
        model.predict(tmp_path / "broken.png")
    for kwargs, message in [
        ({"output": "mask"}, r"output='mask'; valid: 'labels', 'probs', 'logits'"),
        ({"scales": []}, r"scales: positive scale factors"),
        ({"scales": [1.0, 0]}, r"scales: positive scale factors"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
        ({"mode": "tiles"}, r"unknown inference mode 'tiles'"),
        ({"crop_size": (24,)}, r"crop_size: \(H, W\) positive integers"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.predict(files["street"], **kwargs)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        seg.load(tmp_path / "missing.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA device; use device='cpu'"):
            seg.load(files["ckpt"], device="cuda")


def test_a_pil_image_with_an_exif_orientation_is_taken_as_stored_with_a_warning(files, model):
    phone = files["images"] / "phone.jpg"
    with pytest.warns(UserWarning, match=r"EXIF orientation 6 is not applied.*pass the file's path"):
        stored = model.predict(Image.open(phone))
    assert stored.shape == (40, 56) and model.predict(phone).shape == (56, 40)


def test_the_readme_snippet_runs_as_written(files, tmp_path, monkeypatch):
    """The README's Python API block, in a folder holding the files it names."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "seg.load(" in snippet and ".predict(" in snippet and len(snippet.strip().splitlines()) <= 6
    monkeypatch.chdir(tmp_path)
    for name in re.findall(r'"([\w/.]+\.(?:ckpt|png|jpg))"', snippet):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files["ckpt"] if name.endswith(".ckpt") else files["street"], name)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["mask"].shape == (45, 61) and scope["colors"].shape == (45, 61, 3)


def test_the_module_docstring_runs_as_written(files):
    result = doctest.testmod(
        seg.segmenter, extraglobs={"ckpt": files["ckpt"], "image": files["street"]}, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_prediction_equals_the_cpus(files, model):
    gpu = seg.load(files["ckpt"], device="cuda")
    rgb = cv2.imread(str(files["street"]))[..., ::-1].copy()
    for settings in ({}, SLIDE):
        np.testing.assert_allclose(
            gpu.predict(rgb, output="probs", **settings), model.predict(rgb, output="probs", **settings), atol=1e-4
        )
    probs = gpu.predict(torch.from_numpy(rgb).permute(2, 0, 1).cuda(), output="probs")
    assert probs.device.type == "cuda"
    assert gpu.to("cpu").device.type == "cpu"
    np.testing.assert_allclose(gpu.predict(rgb, output="probs"), model.predict(rgb, output="probs"), atol=1e-6)
