"""seg.export / seg.predict --onnx: every registered head exports (ONNX, TorchScript, torch.export) and
matches eager PyTorch at the traced size and at another size; the ONNX predict path runs with torch
imports blocked and writes the masks the PyTorch path writes.

Tiny ResNet-18 widths and 64x96 / 81x113 inputs keep this to a few seconds per head on CPU. The eager
reference is the model in its default mode (chunked / fused attention cores, matrix resize), so the
tests also check that ``export_mode()``'s reference formulation computes the same function.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers import run_cmd_without_torch
from PIL import Image

from seg import export as export_cmd
from seg import predict as predict_cmd
from seg.deploy.geometry import slide_windows
from seg.export import DeployModel, export_model, run_exported, save_onnx, trace_program, trace_torchscript
from seg.models import HEADS, build_model, save_checkpoint

ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[export]'); CI installs it")

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), zero_init_last=False)
SIZE, OTHER = (64, 96), (81, 113)


# torch.export specialises every dimension that is 1 at the traced size: ISA's default 8x8 blocks would leave a
# single long-range group on the 8x12 feature map of a 64x96 trace, so the tiny model uses 2x2 blocks.
TINY_HEAD_KWARGS = {"isa": {"down_factor": (2, 2)}}


def tiny_deploy(head: str, **kw) -> DeployModel:
    torch.manual_seed(0)
    model = build_model(
        "resnet18", head, 3, backbone_kwargs=TINY, aux_channels=8, channels=16, **TINY_HEAD_KWARGS.get(head, {})
    )
    with torch.no_grad():  # open the zero-initialised residual branches: attention must affect the output
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("nl_block.norm.weight"):
                p.fill_(0.5)
    return DeployModel(model, **kw).eval()


def rel_diff(out: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.numpy()
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def check_sizes(deploy: DeployModel, run, sizes_batches) -> None:
    for (h, w), b in sizes_batches:
        x = deploy.example(b, (h, w), seed=h)
        with torch.no_grad():
            ref = deploy(x)  # eager, default (non-export) attention cores and resize
            out = run(x)
        assert rel_diff(out, ref) <= 1e-4, (h, w, b)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_exports_dynamic_and_matches_pytorch(head, tmp_path):
    """One torch.export trace per head: the program itself, its ONNX conversion (ONNX Runtime) and a
    TorchScript trace, each at the traced size and at another size and batch."""
    deploy = tiny_deploy(head)
    sizes = [(SIZE, 2), (OTHER, 1)]
    if not getattr(deploy.model.head, "export_dynamic", True):  # ISA: a clear error, and a fixed-size export
        with pytest.raises(ValueError, match="without --dynamic"):
            trace_program(deploy, SIZE, dynamic=True)
        program = trace_program(deploy, SIZE)
        check_sizes(deploy, lambda x: program.module()(x).numpy(), [(SIZE, 1)])
        session = ort.InferenceSession(str(save_onnx(program, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        check_sizes(deploy, lambda x: session.run(None, {name: x.numpy()})[0], [(SIZE, 1)])
        return
    program = trace_program(deploy, SIZE, dynamic=True)
    check_sizes(deploy, lambda x: program.module()(x).numpy(), sizes)
    session = ort.InferenceSession(str(save_onnx(program, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    check_sizes(deploy, lambda x: session.run(None, {name: x.numpy()})[0], sizes)
    traced = trace_torchscript(deploy, SIZE, dynamic=True)
    check_sizes(deploy, lambda x: traced(x).numpy(), [(SIZE, 2), (OTHER, 3)])


def _attention_keys() -> list[str]:
    from seg.layers import ATTENTION

    return sorted(ATTENTION)


@pytest.mark.parametrize("key", _attention_keys())
def test_every_attention_block_exports_to_onnx(key, tmp_path):
    """Each seg.layers block alone (what FCN's ``attention=`` inserts), dynamic B/H/W, through ONNX Runtime."""
    from seg.layers import create_attention
    from seg.layers.functional import export_mode

    torch.manual_seed(0)
    block = create_attention(key, 16).eval()
    with torch.no_grad():  # open zero-initialised residual branches
        for name, p in block.named_parameters():
            if name.endswith("gamma") or name.endswith("norm.weight"):
                p.fill_(0.5)
    auto = torch.export.Dim.AUTO
    with torch.no_grad(), export_mode():
        program = torch.export.export(
            block, (torch.randn(2, 16, 9, 13),), dynamic_shapes=({0: auto, 2: auto, 3: auto},)
        )
    session = ort.InferenceSession(str(save_onnx(program, tmp_path / "b.onnx")), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for shape in [(2, 16, 9, 13), (1, 16, 11, 7)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = block(x)  # default (non-export) cores
        assert rel_diff(session.run(None, {name: x.numpy()})[0], ref) <= 1e-4, shape


def test_saved_torchscript_and_exported_files_load(tmp_path):
    """The files written for the two PyTorch formats load back (with their metadata) and run."""
    deploy = tiny_deploy("fcn")
    for fmt, name in (("torchscript", "m.pt"), ("exported", "m.pt2")):
        path = export_model(deploy, fmt, tmp_path / name, SIZE, dynamic=True, meta={"num_classes": 3})
        check_sizes(deploy, run_exported(fmt, path), [(SIZE, 2), (OTHER, 1)])
    extra = {"seg_deploy.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["seg_deploy.json"]) == {"num_classes": 3}
    with pytest.raises(ValueError, match="must end in .pt2"):
        export_model(deploy, "exported", tmp_path / "m.pt", SIZE)


def test_static_onnx_with_normalize_and_argmax(tmp_path):
    """uint8 (B, H, W, 3) in, labels out, traced size only; normalisation inside the graph equals the caller's."""
    deploy = tiny_deploy("fcn", normalize=True, argmax=True)
    path = export_model(deploy, "onnx", tmp_path / "m.onnx", SIZE, opset=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape == [1, *SIZE, 3]
    x = deploy.example(1, SIZE)
    labels = session.run(None, {inp.name: x.numpy()})[0]
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    with torch.no_grad():  # independent normalisation, float input, eager logits
        logits = deploy.model(((x.float() - mean) / std).permute(0, 3, 1, 2))["out"]
    assert labels.dtype == np.int64 and labels.shape == (1, *SIZE)
    assert (labels == logits.argmax(1).numpy()).mean() >= 0.999


def test_positional_axial_block_exports(tmp_path):
    """Relative positions index a learned table by the feature size: it stays dynamic (up to max_size)."""
    from seg.layers import AxialAttention
    from seg.layers.functional import export_mode

    torch.manual_seed(0)
    block = AxialAttention(16, reduction=4, heads=2, positional=True, max_size=(12, 16)).eval()
    block.gamma.data.fill_(0.5)
    auto = torch.export.Dim.AUTO
    with torch.no_grad(), export_mode():
        program = torch.export.export(
            block, (torch.randn(2, 16, 9, 13),), dynamic_shapes=({0: auto, 2: auto, 3: auto},)
        )
    session = ort.InferenceSession(str(save_onnx(program, tmp_path / "b.onnx")), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for shape in [(2, 16, 9, 13), (1, 16, 12, 5)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = block(x)
        assert rel_diff(session.run(None, {name: x.numpy()})[0], ref) <= 1e-4, shape


@pytest.mark.parametrize(
    "h,w,crop,stride",
    [
        (48, 48, (32, 32), (16, 16)),
        (65, 97, (32, 48), (20, 30)),
        (20, 30, (32, 48), (16, 16)),
        (100, 33, (40, 33), (40, 1)),
    ],
)
def test_slide_windows_cover_the_image(h, w, crop, stride):
    windows = slide_windows(h, w, crop, stride)
    cover = np.zeros((h, w), dtype=int)
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == (min(crop[0], h), min(crop[1], w))  # never padded, never cut
        assert 0 <= y1 and y2 <= h and 0 <= x1 and x2 <= w
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    starts_y = sorted({y1 for y1, _, _, _ in windows})
    assert all(b - a <= stride[0] for a, b in zip(starts_y, starts_y[1:]))
    assert max(y2 for _, y2, _, _ in windows) == h and max(x2 for _, _, _, x2 in windows) == w


# ------------------------------------------------------------------------------------------------
# end to end: python -m seg.export, then seg.predict with PyTorch and with ONNX Runtime (torch blocked)


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """A seg checkpoint of the train.py model of a tiny config (random weights, decisive classifier) + config."""
    from seg.data.synthetic import write_demo

    tmp = tmp_path_factory.mktemp("export_e2e")
    data = tmp / "data"
    write_demo(data, splits={"val": 3}, size=48)
    backbone = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "zero_init_last": False}
    cfg = {
        "model": {
            "backbone": "resnet18",
            "backbone_kwargs": backbone,
            "head": "danet",
            "weights": None,
            "head_kwargs": {"channels": 16},
            "channels_last": False,
        },
        "data": {
            "dataset": "folder",
            "root": str(data),
            "num_workers": 0,
            "mean": [120.0, 110.0, 100.0],
            "std": [60.0, 50.0, 55.0],
        },
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "wandb": "off",
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = build_model("resnet18", "danet", 5, backbone_kwargs=backbone, channels=16)
    with torch.no_grad():
        model.head.conv_seg.weight.normal_(0, 1.0)  # varied predictions, few near-ties
        model.head.pam.gamma.fill_(0.5)
        model.head.cam.gamma.fill_(0.5)
    ckpt = save_checkpoint(model, tmp / "model.ckpt")
    return ckpt, tmp / "cfg.yaml", data


def run_onnx_predict_without_torch(args: list[str]) -> None:
    proc = run_cmd_without_torch(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no PyTorch" in proc.stdout


def test_predict_onnx_without_torch_matches_pytorch(seg_checkpoint, tmp_path):
    """python -m seg.export (seg checkpoint + config) -> seg.predict --onnx with torch imports blocked; the masks
    equal seg.predict's PyTorch path, whole image and sliding window (mode and crop overridden at predict time)."""
    ckpt, cfg, data = seg_checkpoint
    onnx_path = tmp_path / "model.onnx"
    result = export_cmd.main(
        [
            "--ckpt",
            str(ckpt),
            "--format",
            "onnx",
            "--out",
            str(onnx_path),
            "--dynamic",
            "--config",
            str(cfg),
            "--size=[48,48]",
        ]
    )
    assert len(result["checks"]) == 2 and all(row["rel"] <= 1e-4 for row in result["checks"])
    meta = ort.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map
    classes = json.loads((data / "classes.json").read_text())
    assert json.loads(meta["seg.palette"]) == classes["palette"] and json.loads(meta["seg.mean"]) == [120, 110, 100]
    assert json.loads(meta["seg.eval_mode"]) == "whole" and json.loads(meta["seg.normalize_baked"]) is False

    for mode in ("whole", "slide"):
        torch_dir, onnx_dir = tmp_path / f"torch_{mode}", tmp_path / f"onnx_{mode}"
        torch_args = ["--mode", "slide", "--crop_size", "[32, 32]", "--stride", "[16, 16]"] if mode == "slide" else []
        onnx_args = ["--mode", "slide", "--crop_size=[32,32]", "--stride=[16,16]"] if mode == "slide" else []
        written = predict_cmd.main(
            ["--config", str(cfg), "--ckpt", str(ckpt), str(data / "val/images"), "--out", str(torch_dir), *torch_args]
        )
        run_onnx_predict_without_torch(
            ["--onnx", str(onnx_path), str(data / "val/images"), "--out", str(onnx_dir), *onnx_args]
        )
        agree = total = 0
        for mask in written:
            ref = np.asarray(Image.open(mask))  # palette PNGs: PIL gives the indices
            out = np.asarray(Image.open(onnx_dir / mask.name))
            assert out.shape == ref.shape == (48, 48)
            agree += int((out == ref).sum())
            total += ref.size
            color_ref = cv2.imread(str(torch_dir / f"{mask.stem}_color.png"))
            color = cv2.imread(str(onnx_dir / f"{mask.stem}_color.png"))
            assert ((color == color_ref).all(axis=2) == (out == ref)).all()  # same palette
            assert (onnx_dir / f"{mask.stem}_overlay.jpg").is_file()
        masks = np.stack([np.asarray(Image.open(m)) for m in written])
        assert len(np.unique(masks)) >= 2, "a constant prediction would make this comparison vacuous"
        assert agree / total >= 0.999, mode  # float rounding may flip a near-tie pixel, nothing more


@pytest.mark.parametrize("channels", [1, 19, 150])
def test_numpy_resize_matches_interpolate(channels):
    """The ONNX path's probability resize (OpenCV, in chunks of channels) is F.interpolate's bilinear rule."""
    from seg.deploy.onnx_predict import _resize_chw

    a = torch.randn(channels, 17, 23)
    for size in [(40, 50), (9, 11)]:
        ref = torch.nn.functional.interpolate(a[None], size=size, mode="bilinear", align_corners=False)[0]
        out = _resize_chw(a.numpy(), size)
        assert out.shape == (channels, *size)
        np.testing.assert_allclose(out, ref.numpy(), atol=5e-5)
