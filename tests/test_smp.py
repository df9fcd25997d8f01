"""smp architectures as seg heads (``smp:<Architecture>``) and the smp loss terms (``dice``, ``focal``, ``lovasz``,
weighted sums): every registered architecture builds and forwards at input resolution with tiny widths, the
output stride is honoured or refused, weights load, checkpoints rebuild, one architecture trains through the CLI,
and each loss equals an independent computation on the labelled pixels only."""

from __future__ import annotations

import json

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from helpers import TINY_BACKBONE, tiny_arch_kwargs, tiny_config, tiny_smp

from seg.loading import load_model
from seg.models import (
    SMP_HEADS,
    SmpModel,
    TimmBackbone,
    all_head_names,
    build_model,
    get_head,
    head_signature,
    save_checkpoint,
)
from seg.models.safe_load import CheckpointError
from seg.models.smp import SUPPLIED
from seg.training.cli import main
from seg.training.losses import SegLoss, cross_entropy, parse_loss

NUM_CLASSES = 5


def test_registry_covers_smp():
    assert set(SMP_HEADS) == {f"smp:{c.__name__}" for c in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    assert {"smp:Unet", "smp:DeepLabV3Plus", "smp:Segformer", "smp:DPT", "smp:UPerNet"} <= set(SMP_HEADS)
    names = all_head_names()
    assert names[-len(SMP_HEADS) :] == tuple(SMP_HEADS) and "fcn" in names
    from seg import bench

    assert set(SMP_HEADS) <= set(bench.HEADS)


@pytest.mark.parametrize("head", list(SMP_HEADS))
def test_every_arch_forwards_at_input_resolution(head):
    torch.manual_seed(0)
    model = tiny_smp(head)
    assert model.build_args["head"] == head and model.build_args["aux"] is False
    x = torch.randn(1, 3, 19, 27)  # odd sizes: padded inside, cropped back
    with torch.no_grad():
        out = model.eval()(x)
    assert set(out) == {"out"} and out["out"].shape == (1, NUM_CLASSES, 19, 27)
    assert torch.isfinite(out["out"]).all()
    # a size the decoder takes as is (PAN: at least 8 x 8 at its stride): exactly smp's own logits, nothing added
    s = max(32, model.min_size)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], model.net(x), rtol=0, atol=0)
    model.train()
    outs = model(x, resize=False)  # what training calls
    assert set(outs) == {"out"} and outs["out"].shape == (2, NUM_CLASSES, s, s)
    loss, _ = SegLoss("ce")(outs, torch.randint(0, NUM_CLASSES, (2, s, s)))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_output_stride_honoured_or_refused():
    assert get_head("smp:DeepLabV3").output_strides == (8, 16)
    assert get_head("smp:PAN").output_strides == (16, 32)
    assert get_head("smp:Unet").output_strides == (32,)
    x = torch.randn(1, 3, 64, 64)
    for stride in (8, 16):
        model = tiny_smp("smp:DeepLabV3Plus", output_stride=stride).eval()
        assert model.backbone.output_stride == stride  # the encoder is dilated accordingly
        with torch.no_grad():
            feats = model.backbone(x)
        assert feats[-1].shape[-1] == 64 // stride
        # dilated exactly as seg's native (mmseg-compatible) backbone: same timm model, same weights, same features
        native = TimmBackbone("resnet18", output_stride=stride, model_kwargs=TINY_BACKBONE).eval()
        native.body.load_state_dict(model.backbone.model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(native(x)[-1], feats[-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"smp:Unet .*supports only output_stride=32.*--model.output_stride=32"):
        get_head("smp:Unet").check(output_stride=8)
    with pytest.raises(ValueError, match=r"smp:DeepLabV3 supports output_stride 8 or 16"):
        build_model("resnet18", "smp:DeepLabV3", 3, output_stride=32, backbone_kwargs=TINY_BACKBONE)
    get_head("smp:PAN").check(output_stride=32)
    get_head("fcn").check(output_stride=16)


def test_signature_arguments_and_errors():
    builder, supplied = head_signature("smp:DeepLabV3")
    assert builder is smp.DeepLabV3 and supplied == SUPPLIED | {"encoder_output_stride"}
    builder, supplied = head_signature("smp:Unet")
    assert builder is smp.Unet and "encoder_output_stride" not in supplied and "decoder_channels" not in supplied
    for call in (lambda: head_signature("smp:Unett"), lambda: build_model("resnet18", "smp:Unett", 3)):
        with pytest.raises(
            ValueError, match=r"Unknown head 'smp:Unett'. Valid heads: fcn, .*smp:Unet.*Did you mean smp:Unet"
        ):
            call()  # one registry, one message: the same for every route
    with pytest.raises(ValueError, match=r"Unknown head_kwargs \['channels'\] for smp:Unet.*decoder_channels"):
        build_model("resnet18", "smp:Unet", 3, output_stride=32, backbone_kwargs=TINY_BACKBONE, channels=16)
    with pytest.raises(ValueError, match=r"head_kwargs \['classes'\] of smp:FPN are set by seg"):
        build_model("resnet18", "smp:FPN", 3, output_stride=32, backbone_kwargs=TINY_BACKBONE, classes=4)
    with pytest.warns(UserWarning, match="no auxiliary segmentation head"):
        model = build_model("resnet18", "smp:Linknet", 3, output_stride=32, aux=True, backbone_kwargs=TINY_BACKBONE)
    assert model.build_args["aux"] is False


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_local_file(tmp_path, suffix):
    src = timm.create_model("resnet18", **TINY_BACKBONE)  # the classifier model, as a user saves it
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    model = build_model(
        "resnet18",
        "smp:FPN",
        3,
        output_stride=32,
        weights=str(path),
        backbone_kwargs=TINY_BACKBONE,
        **tiny_arch_kwargs("smp:FPN"),
    )
    loaded, ref = model.backbone.model.state_dict(), src.state_dict()
    assert loaded.keys() <= ref.keys() and len(loaded) > 10
    for k, v in loaded.items():
        assert torch.equal(v, ref[k]), k
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 32)).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_model("resnet18", "smp:FPN", 3, output_stride=32, weights=str(wrong), backbone_kwargs=TINY_BACKBONE)
    with pytest.raises(ValueError, match="neither None, 'imagenet' nor an existing weight file"):
        build_model("resnet18", "smp:FPN", 3, output_stride=32, weights=str(tmp_path / "missing.pth"))


def test_vit_weights_from_local_file_and_dpt_needs_a_vit(tmp_path):
    """DPT's encoder is the whole timm ViT: its top-level tensors (cls_token, pos_embed) load too."""
    src = timm.create_model("test_vit")
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    model = build_model(
        "test_vit", "smp:DPT", 3, output_stride=32, weights=str(tmp_path / "vit.pth"), **tiny_arch_kwargs("smp:DPT")
    )
    loaded, ref = model.backbone.model.state_dict(), src.state_dict()
    assert "cls_token" in loaded and "pos_embed" in loaded
    for k, v in loaded.items():
        assert torch.equal(v, ref[k]), k
    with pytest.raises(ValueError, match="smp:DPT needs a Vision Transformer backbone.*not 'resnet18'"):
        build_model("resnet18", "smp:DPT", 3, output_stride=32, backbone_kwargs=TINY_BACKBONE)


def test_imagenet_weights_offline_gives_clear_error(offline_timm):
    with pytest.raises(RuntimeError, match=r"(?s)ImageNet weights for 'resnet18'.*offline.*weights: /path/to/file.pth"):
        build_model("resnet18", "smp:Unet", 3, output_stride=32, weights="imagenet", backbone_kwargs=TINY_BACKBONE)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_smp("smp:DeepLabV3Plus", output_stride=8).eval()
    with torch.no_grad():  # move BatchNorm statistics away from their init, so a missed buffer would show
        model.train()(torch.randn(2, 3, 64, 64))
    model.eval()
    path = save_checkpoint(model, tmp_path / "m.pth")
    again, _ = load_model(path)
    assert isinstance(again, SmpModel) and again.build_args == model.build_args
    assert again.net.encoder.output_stride == 8
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["out"], model(x)["out"], rtol=0, atol=0)


def test_compare_overrides_for_smp_heads(tmp_path):
    from seg.compare.runs import head_overrides

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  output_stride: 8\n  head_kwargs: {channels: 16}\n")
    assert head_overrides("fcn", str(cfg)) == []
    assert head_overrides("smp:Unet", str(cfg))[-1] == "--model.output_stride=32"
    assert head_overrides("smp:DeepLabV3", str(cfg))[-1] == "--model.output_stride=8"  # the config's, supported
    assert head_overrides("smp:PAN", str(cfg))[-1] == "--model.output_stride=16"  # 8 unsupported: PAN's default
    assert "--model.head_kwargs={}" in head_overrides("smp:Unet", str(cfg))


def test_smp_trains_through_cli_and_rebuilds_from_checkpoint(tiny_data, tmp_path):
    """train.py with an smp architecture and a weighted loss; the checkpoint rebuilds the same network."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=2, val_check_interval=2)
    head_kwargs = json.dumps({"decoder_channels": [16, 8, 8, 8, 8]})
    with pytest.warns(UserWarning, match="no auxiliary segmentation head"):  # the config says aux: true (default)
        cli = main(
            [
                "--config",
                str(cfg),
                "--model.head=smp:Unet",
                f"--model.head_kwargs={head_kwargs}",
                "--model.output_stride=32",
                "--model.loss=ce+0.5*dice",
            ]
        )
    assert cli.trainer.global_step == 2 and isinstance(cli.model.model, SmpModel)
    assert cli.model.criterion.terms == (("ce", 1.0), ("dice", 0.5))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["head"] == "smp:Unet" and 0.0 <= summary["last"]["mIoU"] <= 1.0
    rebuilt, info = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert info.hparams["loss"] == "ce+0.5*dice" and type(info.hparams["loss"]) is str
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)["out"], cli.model.model.eval()(x)["out"], rtol=0, atol=0)


def test_loss_typo_fails_at_parse_time(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run")
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "--model.loss=ce+dcie"])
    err = capsys.readouterr().err
    assert "model.loss" in err and "'dcie'" in err and "ce, ohem, dice, focal, lovasz" in err


# -- losses ------------------------------------------------------------------------------------------------
def test_parse_loss_grammar():
    assert parse_loss("ce") == (("ce", 1.0),)
    assert parse_loss(" ce + 0.5*dice ") == (("ce", 1.0), ("dice", 0.5))
    assert parse_loss("2*ohem+lovasz+1e-1*focal") == (("ohem", 2.0), ("lovasz", 1.0), ("focal", 0.1))
    for bad, msg in [
        ("", "expected one of"),
        ("cee", "'cee'"),
        ("ce+", "''"),
        ("dice*0.5", "'dice\\*0.5'"),
        ("ce+ce", "appears twice"),
        ("0*dice", "positive"),
        ("-1*dice", "'-1\\*dice'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            SegLoss(bad)


def _labelled_batch(seed: int = 0, c: int = 4, size: tuple[int, int] = (9, 11), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, *size, generator=g, dtype=dtype) * 2
    target = torch.randint(0, c, (2, *size), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = 255
    target[:, 0, 0] = 255
    target[target == c - 1] = 255  # one class absent from the labelled pixels
    return logits, target


def _dice_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """smp's multiclass soft Dice over the labelled pixels of the batch: mean over classes of 1 - 2|P.T|/(|P|+|T|),
    0 for classes without labelled pixels."""
    c = logits.shape[1]
    valid = target != 255
    p = logits.softmax(1).permute(1, 0, 2, 3)[:, valid]  # (C, N)
    t = F.one_hot(target[valid], c).T.to(p.dtype)  # (C, N)
    dice = 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1)).clamp_min(1e-7)
    return ((1 - dice) * (t.sum(1) > 0)).mean()


def _focal_by_hand(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """One-vs-rest sigmoid focal loss per class over the labelled pixels, mean over pixels, then over classes."""
    valid = target != 255
    z = logits.permute(1, 0, 2, 3)[:, valid]  # (C, N)
    t = (target[valid][None] == torch.arange(logits.shape[1])[:, None]).to(z.dtype)
    p = z.sigmoid()
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    return ((1 - torch.exp(-bce)) ** gamma * bce).mean(1).mean()


def test_dice_and_focal_equal_hand_computation_on_labelled_pixels():
    logits, target = _labelled_batch()
    for name, ref in (("dice", _dice_by_hand), ("focal", _focal_by_hand)):
        total, parts = SegLoss(name)({"out": logits}, target)
        torch.testing.assert_close(total, ref(logits, target), rtol=1e-10, atol=1e-12)
        # ignored pixels never matter: change their logits arbitrarily
        moved = torch.where((target == 255)[:, None], logits + 100.0 * torch.randn_like(logits), logits)
        torch.testing.assert_close(SegLoss(name)({"out": moved}, target)[0], total, rtol=1e-10, atol=1e-12)


def test_lovasz_equals_smp_on_the_labelled_subset():
    logits, target = _labelled_batch(1, dtype=torch.float32)  # smp's Lovasz gradient is fp32 only
    valid = target != 255
    subset_logits = logits.permute(1, 0, 2, 3)[:, valid][None, :, :, None]  # (1, C, N, 1): labelled pixels only
    subset_target = target[valid][None, :, None]  # (1, N, 1)
    ref = smp.losses.LovaszLoss("multiclass")(subset_logits, subset_target)  # no ignore index needed
    total, _ = SegLoss("lovasz")({"out": logits}, target)
    torch.testing.assert_close(total, ref, rtol=1e-6, atol=1e-7)
    assert float(total) > 0


def test_weighted_sum_on_every_output_and_feature_resolution_logits():
    """'ce+0.5*dice' on out (mask resolution) and aux (lower resolution, resized bilinearly): each output gets
    both terms, the aux output weighs 0.4."""
    out, target = _labelled_batch(2, size=(16, 24))
    aux = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    aux_full = F.interpolate(aux, size=(16, 24), mode="bilinear", align_corners=False)
    total, parts = SegLoss("ce+0.5*dice")({"out": out, "aux": aux}, target)
    want_out = cross_entropy(out, target) + 0.5 * _dice_by_hand(out, target)
    want_aux = cross_entropy(aux, target) + 0.5 * _dice_by_hand(aux_full, target)
    torch.testing.assert_close(parts["out"], want_out, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(parts["aux"], want_aux, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(total, want_out + 0.4 * want_aux, rtol=1e-9, atol=1e-12)


def test_smp_terms_all_ignored_give_zero_with_gradient():
    logits = torch.randn(1, 3, 5, 5, requires_grad=True)
    target = torch.full((1, 5, 5), 255)
    total, _ = SegLoss("ce+dice+focal+lovasz")({"out": logits}, target)
    total.backward()
    assert float(total) == 0.0 and torch.isfinite(logits.grad).all()


def test_dynamic_export_runs_at_sizes_that_need_padding():
    """``seg.export --dynamic``: the padding to a multiple of 32 and the crop stay symbolic (no size is frozen)."""
    from seg.export import DeployModel, trace_program

    deploy = DeployModel(tiny_smp("smp:FPN")).eval()
    program = trace_program(deploy, (64, 96), dynamic=True).module()
    for size in ((64, 96), (45, 77)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program(x), deploy(x), rtol=1e-5, atol=1e-5)
