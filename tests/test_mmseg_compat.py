"""mmsegmentation compatibility: converted checkpoints give mmseg's logits; R50-D8 sizes match mmseg.

The golden files in tests/data/mmseg/ come from scripts/make_mmseg_golden.py (run once with
mmsegmentation 1.2.2 + mmcv-lite 2.1.0 in a separate venv; seg never imports mmseg). They hold tiny
R50-D8-shaped mmseg EncoderDecoder models (ResNetV1c with Bottleneck blocks (1, 1, 2, 2), head width
8, 3 classes) with random weights and BN statistics, a 1x3x49x65 input and mmseg's outputs.
``zoo.pt`` holds the other heads (PSP ... UPerNet): one shared backbone, each head's mmseg keys, and
mmseg's outputs at feature resolution (the generator asserts ``encode_decode`` is their bilinear resize).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seg.loading import load_model
from seg.models import HEADS, build_model, convert_mmseg_state_dict, load_mmseg_checkpoint
from seg.models.mmseg import read_mmseg_state_dict

DATA = Path(__file__).parent / "data" / "mmseg"
MM_HEADS = ("fcn", "ccnet", "danet", "nonlocal")
ZOO_HEADS = ("psp", "aspp", "sep_aspp", "gc", "ema", "isa", "dnl", "ann", "ocr", "uper")
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
        stage3, stage4 = model.backbone(x)[-2:]
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


@pytest.mark.parametrize(
    "head,param",
    [
        ("ccnet", "head.cca.gamma"),
        ("danet", "head.pam.gamma"),
        ("danet", "head.cam.gamma"),
        ("nonlocal", "head.nl_block.norm.weight"),
    ],
)
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
    with pytest.raises(
        ValueError,
        match=r"(?s)1 missing keys.*head\.conv_cat\.conv\.weight.*"
        r"1 unexpected keys.*head\.extra\.weight",
    ):
        load("fcn", golden, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: \['head\.conv_seg\.weight: checkpoint \(3, 8, 1, 1\)"):
        load_mmseg_checkpoint(DATA / "fcn.pth", "fcn", **dict(golden["seg_kwargs"], num_classes=5))
    with pytest.raises(ValueError, match="missing keys.*head.cca"):  # an FCN checkpoint is not a CCNet
        load("ccnet", golden, DATA / "fcn.pth")


@pytest.fixture(scope="module")
def zoo() -> dict:
    return torch.load(DATA / "zoo.pt", weights_only=True)


def zoo_checkpoint(head: str, zoo: dict, tmp_path: Path) -> Path:
    """The mmseg checkpoint of one zoo model: the shared backbone keys + that head's keys, as mmseg saves it."""
    path = tmp_path / f"{head}.pth"
    state = {k: v.clone() for k, v in {**zoo["backbone"], **zoo["heads"][head]["state_dict"]}.items()}
    torch.save({"state_dict": state, "meta": {"mmseg_cfg": zoo["heads"][head]["mmseg_cfg"]}}, path)
    return path


def load_zoo(head: str, zoo: dict, tmp_path: Path):
    kwargs = dict(zoo["seg_kwargs"], **zoo["heads"][head]["seg_kwargs"])
    return load_mmseg_checkpoint(zoo_checkpoint(head, zoo, tmp_path), head, **kwargs)


def test_zoo_covers_every_mmseg_head():
    assert set(HEADS) == set(MM_HEADS) | set(ZOO_HEADS) | {"axial"}  # axial has no mmseg counterpart


@pytest.mark.parametrize("head", ZOO_HEADS)
def test_zoo_logits_equal_mmseg(head, golden, zoo, tmp_path):
    model = load_zoo(head, zoo, tmp_path)
    assert not model.training and model.aux_head is not None
    ref = zoo["heads"][head]
    x = golden["input"]
    with torch.no_grad():
        low = model(x, resize=False)["out"]
        out = model(x)
        aux = model.aux_head(model.backbone(x)[2])["out"]
    # mmseg's decode head output, and its encode_decode = bilinear resize of it to the input
    assert low.shape == ref["logits"].shape and rel_err(low, ref["logits"]) <= RTOL
    encode_decode = F.interpolate(ref["logits"], x.shape[-2:], mode="bilinear", align_corners=False)
    assert set(out) == {"out"} and rel_err(out["out"], encode_decode) <= RTOL
    assert rel_err(aux, ref["aux"]) <= RTOL  # the auxiliary head; for OCRNet the cascade's first stage
    if head in ("sep_aspp", "uper"):  # decoders at stride 4
        assert low.shape[-2:] == model.backbone(x)[0].shape[-2:] == (13, 17)


# One parameter per head whose branch must matter: zeroing it breaks the agreement (else the test above proves
# little about that branch).
ZOO_BRANCHES = [
    ("psp", "head.psp_modules.3.1.bn.weight"),
    ("aspp", "head.image_pool.1.bn.weight"),
    ("aspp", "head.aspp_modules.3.bn.weight"),
    ("sep_aspp", "head.c1_bottleneck.bn.weight"),
    ("sep_aspp", "head.aspp_modules.3.depthwise_conv.bn.weight"),
    ("gc", "head.gc_block.channel_add_conv.3.weight"),
    ("gc", "head.gc_block.conv_mask.weight"),
    ("ema", "head.ema_out_conv.bn.weight"),
    ("isa", "head.global_relation.output_project.bn.weight"),
    ("isa", "head.local_relation.output_project.bn.weight"),
    ("dnl", "head.dnl_block.norm.weight"),
    ("dnl", "head.dnl_block.conv_mask.weight"),
    ("ann", "head.fusion.stages.0.out_project.weight"),
    ("ann", "head.context.stages.0.out_project.weight"),
    ("ocr", "head.object_context_block.out_project.bn.weight"),
    ("ocr", "aux_head.conv_seg.weight"),
    ("uper", "head.fpn_convs.0.bn.weight"),
    ("uper", "head.psp_modules.0.1.bn.weight"),
]


@pytest.mark.parametrize("head,param", ZOO_BRANCHES)
def test_zoo_golden_exercises_the_branches(head, param, golden, zoo, tmp_path):
    model = load_zoo(head, zoo, tmp_path)
    with torch.no_grad():
        dict(model.named_parameters())[param].zero_()
        out = model(golden["input"], resize=False)["out"]
    assert rel_err(out, zoo["heads"][head]["logits"]) > 1e-3


def test_ema_bases_move_like_mmseg_in_train_mode(golden, zoo, tmp_path):
    """One train-mode step of the EMA head (BN on batch statistics) updates the bases as mmseg's does."""
    model = load_zoo("ema", zoo, tmp_path)
    before = model.head.ema_module.bases.clone()
    with torch.no_grad():
        stage4 = model.backbone(golden["input"])[3]
        model.head(stage4)
        assert torch.equal(model.head.ema_module.bases, before)  # eval mode: no update
        model.head.train()
        model.head(stage4)
    after = zoo["heads"]["ema"]["bases_after_train_step"]
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(model.head.ema_module.bases, after, rtol=1e-5, atol=1e-6)


def test_ocr_needs_its_first_stage(zoo, tmp_path):
    with pytest.raises(ValueError, match="cascade head.*aux=True"):
        load_mmseg_checkpoint(
            zoo_checkpoint("ocr", zoo, tmp_path),
            "ocr",
            aux=False,
            **dict(zoo["seg_kwargs"], **zoo["heads"]["ocr"]["seg_kwargs"]),
        )


def test_convert_command_for_uper_at_output_stride_32(golden, zoo, tmp_path):
    """``python -m seg.convert mmseg ... --head uper --output_stride 32`` (its main(), in process)."""
    from seg.convert import main

    bk = zoo["seg_kwargs"]["backbone_kwargs"]
    dst = tmp_path / "uper.ckpt"
    argv = [
        "mmseg",
        str(zoo_checkpoint("uper", zoo, tmp_path)),
        str(dst),
        "--head",
        "uper",
        "--backbone",
        "resnet50c",
        "--num_classes",
        "3",
        "--output_stride",
        "32",
        "--channels",
        "4",
        "--aux_channels",
        "4",
        "--backbone_kwargs",
        json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in bk.items()}),
    ]
    assert main(argv) == 0
    model, _ = load_model(dst)
    assert model.build_args["output_stride"] == 32 and model.backbone.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        low = model(golden["input"], resize=False)["out"]
    assert rel_err(low, zoo["heads"]["uper"]["logits"]) <= RTOL
    assert main(argv[:-2] + ["--backbone_kwargs", json.dumps({**json.loads(argv[-1]), "stem_width": 8})]) == 2


def test_key_renames():
    renamed = convert_mmseg_state_dict(
        {
            "backbone.stem.0.weight": torch.zeros(1),
            "backbone.stem.7.running_var": torch.zeros(1),
            "backbone.layer3.1.conv2.weight": torch.zeros(1),
            "decode_head.cca.gamma.scale": torch.tensor(0.5),
            "decode_head.pam.query_project.bias": torch.zeros(1),
            "auxiliary_head.conv_seg.bias": torch.zeros(1),
            "decode_head.nl_block.conv_out.bn.weight": torch.zeros(1),
            "decode_head.nl_block.theta.conv.bias": torch.zeros(1),
            "decode_head.dnl_block.g.conv.weight": torch.zeros(1),
            "decode_head.dnl_block.conv_out.conv.weight": torch.zeros(1),
            "decode_head.dnl_block.conv_mask.bias": torch.zeros(1),
        }
    )
    assert sorted(renamed) == sorted(
        [
            "backbone.body.conv1.0.weight",
            "backbone.body.bn1.running_var",
            "backbone.body.layer3.1.conv2.weight",
            "head.cca.gamma",
            "head.pam.query_conv.bias",
            "aux_head.conv_seg.bias",
            "head.nl_block.norm.weight",
            "head.nl_block.theta.bias",
            "head.dnl_block.g.weight",
            "head.dnl_block.conv_out.weight",
            "head.dnl_block.conv_mask.bias",
        ]
    )
    assert renamed["head.cca.gamma"].shape == (1,)
    cascade = convert_mmseg_state_dict(
        {
            "decode_head.0.conv_seg.bias": torch.zeros(1),
            "decode_head.1.object_context_block.bottleneck.conv.weight": torch.zeros(1),
            "decode_head.psp_modules.0.1.conv.weight": torch.zeros(1),
        }
    )
    assert sorted(cascade) == [
        "aux_head.conv_seg.bias",
        "head.object_context_block.bottleneck.conv.weight",
        "head.psp_modules.0.1.conv.weight",
    ]


def test_convert_command_round_trip(golden, tmp_path):
    """The user-facing command, in a subprocess, then the seg checkpoint reproduces mmseg's logits."""
    dst = tmp_path / "sub" / "ccnet.ckpt"
    bk = golden["seg_kwargs"]["backbone_kwargs"]
    cmd = [
        sys.executable,
        "-m",
        "seg.convert",
        "mmseg",
        str(DATA / "ccnet.pth"),
        str(dst),
        "--head",
        "ccnet",
        "--backbone",
        "resnet50c",
        "--num_classes",
        "3",
        "--channels",
        "8",
        "--aux_channels",
        "4",
        "--backbone_kwargs",
        '{"layers": %s, "channels": %s, "stem_width": %d}'
        % (list(bk["layers"]), list(bk["channels"]), bk["stem_width"]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(dst, weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    build = ckpt["seg"]["model"]
    assert build["head"] == "ccnet" and build["num_classes"] == 3
    assert build["output_stride"] == 8 and build["aux"] is True
    model, info = load_model(dst)
    assert info.classes == ["class_0", "class_1", "class_2"] and ckpt["converted_from"] == str(DATA / "ccnet.pth")
    with torch.no_grad():
        out = model(golden["input"])["out"]
    assert rel_err(out, golden["heads"]["ccnet"]["logits"]) <= RTOL
    # the same builder the training code uses rebuilds the architecture from the stored arguments
    assert build_model(**build).state_dict().keys() == model.state_dict().keys()
    # a wrong --num_classes fails with the listed mismatch and a non-zero exit code, writing nothing
    bad_dst = tmp_path / "bad.ckpt"
    bad_cmd = cmd[:5] + [str(bad_dst)] + cmd[6:11] + ["5"] + cmd[12:]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "shape mismatches" in bad.stderr
    assert not bad_dst.exists() and [p.name for p in dst.parent.iterdir()] == ["ccnet.ckpt"]


# Parameter counts of mmseg 1.2.2's R50-D8 models with 19 classes, printed by
# `python scripts/make_mmseg_golden.py --counts` (configs/_base_/models/{fcn,ccnet,danet,nonlocal}_r50-d8.py,
# decode head on 2048 channels, FCN aux head on 1024 channels).
MMSEG_R50_D8_DECODE_HEAD = {
    "fcn": 23_605_779,
    "ccnet": 23_934_100,
    "danet": 23_954_619,
    "nonlocal": 24_131_859,
    # configs/_base_/models/{pspnet,deeplabv3,deeplabv3plus,gcnet,emanet,isanet,dnl,ann,ocrnet}_r50-d8.py and
    # upernet_r50.py (OCRNet: its OCRHead, decode_head.1; its decode_head.0 is the FCN = our aux head)
    "psp": 23_083_539,
    "aspp": 42_221_075,
    "sep_aspp": 17_697_923,
    "gc": 23_738_260,
    "ema": 16_458_003,
    "isa": 11_815_443,
    "dnl": 24_132_372,
    "ann": 20_336_659,
    "ocr": 10_632_211,
    "uper": 40_523_283,
}
MMSEG_R50_D8_AUX_HEAD = 2_364_691
MMSEG_R50_V1C_BACKBONE = 23_527_264


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


R50_STAGE_CHANNELS = (256, 512, 1024, 2048)


@pytest.mark.parametrize("head", MM_HEADS + ZOO_HEADS)
def test_r50_d8_head_parameter_counts_match_mmseg(head):
    """The full-width recipe architectures (the golden tests use tiny widths)."""
    stages = HEADS[head].in_stages
    in_channels = R50_STAGE_CHANNELS[stages[0]] if len(stages) == 1 else tuple(R50_STAGE_CHANNELS[i] for i in stages)
    assert count(HEADS[head](in_channels, 19)) == MMSEG_R50_D8_DECODE_HEAD[head]


def test_r50_d8_aux_head_and_backbone_parameter_counts_match_mmseg():
    model = build_model("resnet50c", "fcn", 19, output_stride=8, aux=True, weights=None)
    assert model.backbone.channels == [256, 512, 1024, 2048]
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head", ZOO_HEADS)
def test_zoo_logits_equal_mmseg_on_cuda(head, golden, zoo, tmp_path, monkeypatch):
    """The zoo heads' CUDA paths (SDPA kernels in OCR/ISA/ANN, DNL's fused attention), TF32 off."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = load_zoo(head, zoo, tmp_path).cuda()
    with torch.no_grad():
        low = model(golden["input"].cuda(), resize=False)["out"].cpu()
    assert rel_err(low, zoo["heads"][head]["logits"]) <= RTOL
