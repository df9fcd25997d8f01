"""mmsegmentation compatibility: converted checkpoints give mmseg's logits; R50-D8 sizes match mmseg.

The golden files in tests/data/mmseg/ come from scripts/make_mmseg_golden.py (run once with
mmsegmentation 1.2.2 + mmcv-lite 2.1.0 in a separate venv; seg never imports mmseg). They hold tiny
R50-D8-shaped mmseg EncoderDecoder models (ResNetV1c with Bottleneck blocks (1, 1, 2, 2), head width
8, 3 classes) with random weights and BN statistics, a 1x3x49x65 input and mmseg's outputs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seg.models import (
    build_model, convert_mmseg_state_dict, create_head, load_mmseg_checkpoint, load_seg_checkpoint,
)
from seg.models.mmseg import read_mmseg_state_dict

DATA = Path(__file__).parent / "data" / "mmseg"
MM_HEADS = ("fcn", "ccnet", "danet", "nonlocal")
RTOL = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(DATA / "golden.pt", weights_only=True)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def load(head: str, golden: dict, path: Path | None = None):
    kwargs = dict(golden["seg_kwargs"], **golden["heads"][head]["head_kwargs"])
    return load_mmseg_checkpoint(path or DATA / f"{head}.pth", head, **kwargs)


@pytest.mark.parametrize("head", MM_HEADS)
def test_logits_equal_mmseg_encode_decode(head, golden):
    model = load(head, golden)
    assert not model.training
    ref = golden["heads"][head]
    x = golden["input"]
    with torch.no_grad():
        out = model(x)
        stage3, stage4 = model.backbone(x)
        aux = model.aux_head(stage3)["out"]
    assert set(out) == {"out"} and out["out"].shape == ref["logits"].shape == (1, 3, *x.shape[-2:])
    assert rel_err(out["out"], ref["logits"]) <= RTOL
    assert rel_err(aux, ref["aux"]) <= RTOL
    if head == "danet":  # the deep-supervision branches too: head in train mode, its dropout/BN in eval
        model.head.training = True
        with torch.no_grad():
            branches = model.head(stage4)
        assert rel_err(branches["pam"], ref["pam"]) <= RTOL
        assert rel_err(branches["cam"], ref["cam"]) <= RTOL


@pytest.mark.parametrize("head,param", [("ccnet", "head.cca.gamma"), ("danet", "head.pam.gamma"),
                                        ("danet", "head.cam.gamma"), ("nonlocal", "head.nl_block.norm.weight")])
def test_golden_exercises_the_attention(head, param, golden):
    """Switching an attention branch off must break the agreement, else the test above proves little."""
    model = load(head, golden)
    with torch.no_grad():
        dict(model.named_parameters())[param].zero_()
        out = model(golden["input"])["out"]
    assert rel_err(out, golden["heads"][head]["logits"]) > 1e-2


def test_ccnet_recurrence_matters(golden):
    model = load("ccnet", golden)
    model.head.recurrence = 1
    with torch.no_grad():
        out = model(golden["input"])["out"]
    assert rel_err(out, golden["heads"]["ccnet"]["logits"]) > 1e-2


def test_key_mismatch_lists_the_keys(golden, tmp_path):
    state = read_mmseg_state_dict(DATA / "fcn.pth")
    del state["decode_head.conv_cat.conv.weight"]
    state["decode_head.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"(?s)1 missing keys.*head\.conv_cat\.conv\.weight.*"
                                         r"1 unexpected keys.*head\.extra\.weight"):
        load("fcn", golden, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: \['head\.conv_seg\.weight: checkpoint \(3, 8, 1, 1\)"):
        load_mmseg_checkpoint(DATA / "fcn.pth", "fcn", **dict(golden["seg_kwargs"], num_classes=5))
    with pytest.raises(ValueError, match="missing keys.*head.cca"):  # an FCN checkpoint is not a CCNet
        load("ccnet", golden, DATA / "fcn.pth")


def test_key_renames():
    renamed = convert_mmseg_state_dict({
        "backbone.stem.0.weight": torch.zeros(1), "backbone.stem.7.running_var": torch.zeros(1),
        "backbone.layer3.1.conv2.weight": torch.zeros(1), "decode_head.cca.gamma.scale": torch.tensor(0.5),
        "decode_head.pam.query_project.bias": torch.zeros(1), "auxiliary_head.conv_seg.bias": torch.zeros(1),
        "decode_head.nl_block.conv_out.bn.weight": torch.zeros(1), "decode_head.nl_block.theta.conv.bias": torch.zeros(1),
    })
    assert sorted(renamed) == sorted([
        "backbone.body.conv1.0.weight", "backbone.body.bn1.running_var", "backbone.body.layer3.1.conv2.weight",
        "head.cca.gamma", "head.pam.query_conv.bias", "aux_head.conv_seg.bias", "head.nl_block.norm.weight",
        "head.nl_block.theta.bias",
    ])
    assert renamed["head.cca.gamma"].shape == (1,)


def test_convert_command_round_trip(golden, tmp_path):
    """The user-facing command, in a subprocess, then the seg checkpoint reproduces mmseg's logits."""
    dst = tmp_path / "sub" / "ccnet.ckpt"
    bk = golden["seg_kwargs"]["backbone_kwargs"]
    cmd = [sys.executable, "-m", "seg.convert", "mmseg", str(DATA / "ccnet.pth"), str(dst), "--head", "ccnet",
           "--backbone", "resnet50c", "--num-classes", "3", "--channels", "8", "--aux-channels", "4",
           "--backbone-kwargs", '{"layers": %s, "channels": %s, "stem_width": %d}'
           % (list(bk["layers"]), list(bk["channels"]), bk["stem_width"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(dst, weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert ckpt["seg_model"]["head"] == "ccnet" and ckpt["seg_model"]["num_classes"] == 3
    assert ckpt["seg_model"]["output_stride"] == 8 and ckpt["seg_model"]["aux"] is True
    model = load_seg_checkpoint(dst)
    with torch.no_grad():
        out = model(golden["input"])["out"]
    assert rel_err(out, golden["heads"]["ccnet"]["logits"]) <= RTOL
    # the same builder the training code uses rebuilds the architecture from the stored arguments
    assert build_model(**ckpt["seg_model"]).state_dict().keys() == model.state_dict().keys()
    # a wrong --num-classes fails with the listed mismatch and a non-zero exit code, writing nothing
    bad_dst = tmp_path / "bad.ckpt"
    bad_cmd = cmd[:5] + [str(bad_dst)] + cmd[6:11] + ["5"] + cmd[12:]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "shape mismatches" in bad.stderr
    assert not bad_dst.exists() and [p.name for p in dst.parent.iterdir()] == ["ccnet.ckpt"]


# Parameter counts of mmseg 1.2.2's R50-D8 models with 19 classes, printed by
# `python scripts/make_mmseg_golden.py --counts` (configs/_base_/models/{fcn,ccnet,danet,nonlocal}_r50-d8.py,
# decode head on 2048 channels, FCN aux head on 1024 channels).
MMSEG_R50_D8_DECODE_HEAD = {"fcn": 23_605_779, "ccnet": 23_934_100, "danet": 23_954_619, "nonlocal": 24_131_859}
MMSEG_R50_D8_AUX_HEAD = 2_364_691
MMSEG_R50_V1C_BACKBONE = 23_527_264


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("head", MM_HEADS)
def test_r50_d8_head_parameter_counts_match_mmseg(head):
    assert count(create_head(head, 2048, 19)) == MMSEG_R50_D8_DECODE_HEAD[head]


def test_r50_d8_aux_head_and_backbone_parameter_counts_match_mmseg():
    model = build_model("resnet50c", "fcn", 19, output_stride=8, aux=True, weights=None)
    assert model.backbone.channels == [1024, 2048]
    assert count(model.aux_head) == MMSEG_R50_D8_AUX_HEAD
    assert count(model.backbone) == MMSEG_R50_V1C_BACKBONE
    assert count(model.head) == MMSEG_R50_D8_DECODE_HEAD["fcn"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head", MM_HEADS)
def test_logits_equal_mmseg_on_cuda(head, golden, monkeypatch):
    """The CUDA paths of seg.layers (fused attention) against the CPU mmseg golden, TF32 off."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = load(head, golden).cuda()
    with torch.no_grad():
        out = model(golden["input"].cuda())["out"].cpu()
    assert rel_err(out, golden["heads"][head]["logits"]) <= RTOL
