"""seg.models: backbones, every registered head x output stride, assembly, weights loading.

Tests follow the registries (``HEADS``, ``seg.layers.ATTENTION``): a new head or block is covered
without new test code. Tiny timm ResNet-18 widths and an odd 65x97 input keep this fast on CPU.
"""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
import torch.nn.functional as F

from seg.models import HEADS, TimmBackbone, build_model, head_signature
from seg.models.heads import DecodeHead, FCNHead

# timm ResNet kwargs: stage3/4 = 32/64 channels; zero_init_last=False so every backbone weight gets a gradient
TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), zero_init_last=False)
H, W = 65, 97
NUM_CLASSES = 3


# narrow inner widths; ISA's down factor fits the 9x13 / 5x7 maps (8x8 would leave one long-range group at os16)
TINY_HEAD_KWARGS = {
    "ema": dict(ema_channels=16, num_bases=8),
    "isa": dict(isa_channels=8, down_factor=(2, 3)),
    "ann": dict(project_channels=8),
    "ocr": dict(ocr_channels=8),
    "sep_aspp": dict(c1_channels=8),
}


def tiny_model(head: str, output_stride: int = 8, aux: bool = True, **head_kwargs):
    head_kwargs.setdefault("channels", 16)
    for key, value in TINY_HEAD_KWARGS.get(head, {}).items():
        head_kwargs.setdefault(key, value)
    return build_model(
        "resnet18",
        head,
        NUM_CLASSES,
        output_stride=output_stride,
        aux=aux,
        backbone_kwargs=TINY,
        aux_channels=8,
        **head_kwargs,
    )


def extra_keys(head: str) -> set[str]:
    return {"pam", "cam"} if head == "danet" else set()


def head_output_stride(head: str, output_stride: int) -> int:
    """Decoders reading stage 1 (DeepLabV3+, UPerNet) predict at stride 4."""
    return 4 if HEADS[head].in_stages[0] == 0 else output_stride


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_strides_and_channels(output_stride):
    bb = TimmBackbone("resnet18", output_stride=output_stride, model_kwargs=TINY)
    assert bb.channels == [8, 16, 32, 64]
    assert bb.reductions == {8: [4, 8, 8, 8], 16: [4, 8, 16, 16], 32: [4, 8, 16, 32]}[output_stride]
    feats = bb(torch.randn(1, 3, H, W))
    assert [f.shape[1] for f in feats] == bb.channels
    # ceil-division through the strided convs: 65x97 -> 17x25 (s4), 9x13 (s8), 5x7 (s16), 3x4 (s32)
    size = {4: (17, 25), 8: (9, 13), 16: (5, 7), 32: (3, 4)}
    assert [tuple(f.shape[-2:]) for f in feats] == [size[r] for r in bb.reductions]


def test_resnet50c_is_dilated_like_mmseg():
    """Deep stem + contract_dilation: first block of a dilated stage keeps the previous dilation."""
    bb = TimmBackbone("resnet50c", output_stride=8, model_kwargs=dict(layers=(1, 1, 2, 2), channels=(4, 8, 16, 32)))
    body = bb.body
    assert len(body.conv1) == 7  # deep 3x3 stem (mmseg ResNetV1c)
    assert [b.conv2.dilation[0] for b in body.layer3] == [1, 2]
    assert [b.conv2.dilation[0] for b in body.layer4] == [2, 4]
    assert body.layer3[0].conv2.stride == (1, 1) and body.layer4[0].conv2.stride == (1, 1)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_train_eval_grads(head, output_stride):
    """Every head x output stride: shapes, finite values, a gradient for every trainable weight."""
    torch.manual_seed(0)
    model = tiny_model(head, output_stride)
    with torch.no_grad():  # open the zero-initialised residual branches so every weight gets a non-zero gradient
        for name, p in model.named_parameters():
            if p.ndim > 0 and not p.any() and not name.endswith("bias"):  # gammas, last norms / convs of blocks
                p.fill_(0.5)
    model.train()
    x = torch.randn(2, 3, H, W)  # batch 2: pyramid/image pooling to 1x1 needs >1 value per channel for BatchNorm
    with torch.no_grad():
        low = model(x, resize=False)
    stride = head_output_stride(head, output_stride)
    assert low["out"].shape[-2:] == (-(-H // stride), -(-W // stride))
    outs = model(x)
    assert set(outs) == {"out", "aux"} | extra_keys(head)
    for k, v in outs.items():
        assert v.shape == (2, NUM_CLASSES, H, W), k
        assert torch.isfinite(v).all(), k
    sum(v.float().pow(2).mean() for v in outs.values()).backward()
    # EMANet's ema_mid_conv is frozen (mmseg: a fixed random projection). ANN's fusion value bias shifts every
    # position's context equally (softmax weights sum to 1), and the 1x1 conv + train-mode BatchNorm after it
    # remove such shifts: its gradient is exactly zero in mmseg's architecture too.
    invariant = {"head.fusion.stages.0.value_project.bias"}
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and n not in invariant and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not no_grad, f"parameters without (non-zero) gradient: {no_grad}"
    model.eval()
    with torch.no_grad():
        ev = model(torch.randn(2, 3, H, W))
    assert set(ev) == {"out"} and ev["out"].shape == (2, NUM_CLASSES, H, W)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_without_aux(head):
    if getattr(HEADS[head], "cascade", False):  # OCRNet: the aux FCN is its first stage
        with pytest.raises(ValueError, match="cascade head.*aux=True"):
            tiny_model(head, aux=False)
        return
    model = tiny_model(head, aux=False).train()
    assert model.aux_head is None
    assert set(model(torch.randn(2, 3, H, W))) == {"out"} | extra_keys(head)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="Valid heads:.*fcn"):
        tiny_model("nope")
    with pytest.raises(ValueError, match="Tested backbones:.*resnet101c.*Did you mean: resnet18"):
        build_model("resnet18x", "fcn", 3)


def test_build_args_rebuild_same_architecture():
    model = tiny_model("fcn")
    again = build_model(**model.build_args)
    assert again.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_local_file(tmp_path, suffix):
    src = timm.create_model("resnet18", **TINY)  # full classifier model, as a user would save it
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    model = build_model("resnet18", "fcn", 3, weights=str(path), backbone_kwargs=TINY, channels=16)
    loaded = model.backbone.body.state_dict()
    ref = src.state_dict()
    assert loaded.keys() <= ref.keys()
    for k, v in loaded.items():
        assert torch.equal(v, ref[k]), k


def test_weights_file_mismatch_is_an_error(tmp_path):
    wrong = timm.create_model("resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 32))  # other widths
    path = tmp_path / "wrong.pth"
    torch.save(wrong.state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        TimmBackbone("resnet18", weights=path, model_kwargs=TINY)
    state = timm.create_model("resnet18", **TINY).state_dict()
    del state["layer4.0.conv1.weight"]
    state["layer2.0.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"(?s)missing keys.*\['layer4.0.conv1.weight'\].*unexpected keys.*\['layer2.0.extra'\]"
    ):
        TimmBackbone("resnet18", weights=path, model_kwargs=TINY)
    with pytest.raises(ValueError, match="neither None, 'imagenet' nor an existing weight file"):
        TimmBackbone("resnet18", weights=tmp_path / "missing.pth", model_kwargs=TINY)


def test_imagenet_weights_offline_gives_clear_error(offline_timm):
    """Simulate an offline machine without HF cache: timm's download raises LocalEntryNotFoundError."""
    with pytest.raises(RuntimeError, match=r"(?s)ImageNet weights.*offline.*weights: /path/to/file.pth"):
        TimmBackbone("resnet18", weights="imagenet", model_kwargs=TINY)


def _attention_keys() -> list[str]:
    from seg.layers import ATTENTION

    return sorted(ATTENTION)


@pytest.mark.parametrize("attention", _attention_keys())
def test_fcn_with_every_attention_block(attention):
    model = tiny_model("fcn", attention=attention).train()
    assert model.head.attention is not None
    outs = model(torch.randn(1, 3, H, W))
    assert set(outs) == {"out", "aux"} and outs["out"].shape == (1, NUM_CLASSES, H, W)
    outs["out"].mean().backward()
    assert all(p.grad is not None for p in model.head.attention.parameters())
    with pytest.raises(ValueError, match="valid keys"):
        tiny_model("fcn", attention="nope")


def test_any_timm_features_model_with_output_stride():
    """Not only ResNets: a ConvNeXt with dilated last stages, under the FCN head."""
    model = build_model("convnext_atto", "fcn", NUM_CLASSES, output_stride=16, aux=True, channels=16, aux_channels=8)
    assert model.backbone.reductions == [4, 8, 16, 16]
    outs = model.train()(torch.randn(1, 3, H, W))
    assert {k: tuple(v.shape) for k, v in outs.items()} == {k: (1, NUM_CLASSES, H, W) for k in ("out", "aux")}
    # and a head on all four stages, undilated
    model = build_model("convnext_atto", "uper", NUM_CLASSES, output_stride=32, aux=False, channels=16).eval()
    assert model.backbone.reductions == [4, 8, 16, 32] and model.head.in_channels == (40, 80, 160, 320)
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W), resize=False)["out"]
    assert out.shape == (1, NUM_CLASSES, H // 4, W // 4)  # ConvNeXt's 4x4 patchify stem floors


def test_new_residual_blocks_start_as_identity():
    """GCNet's context block and DNLNet's block add zero at init (last conv / norm zeroed), like mmcv's."""
    from seg.models.heads.dnl import DisentangledNonLocal2d
    from seg.models.heads.gc import ContextBlock

    x = torch.randn(2, 16, 9, 13)
    for block in (
        ContextBlock(16, ratio=1 / 4),
        ContextBlock(16, pooling="avg", fusions=("channel_add",)),
        DisentangledNonLocal2d(16),
    ):
        torch.testing.assert_close(block.eval()(x), x)
    # ANN's plain output projections start at zero too (mmseg's SelfAttentionBlock.init_weights)
    model = tiny_model("ann")
    assert not any(p.any() for p in model.head.fusion.stages[0].out_project.parameters())


def test_ema_bases_are_averaged_over_processes(tmp_path):
    """Under torch.distributed, each rank's batch bases are averaged (mmseg's reduce_mean) before the momentum
    update: two ranks with one image each end with the bases of one process stepping on both images."""
    import torch.multiprocessing as mp

    from seg.models.heads.ema import EMAModule

    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7)
    ref = EMAModule(16, num_bases=8).train()
    start = ref.bases.clone()
    single = EMAModule(16, num_bases=8).train()
    single.bases.copy_(start)
    single(x[:1])  # what rank 0 alone would get
    ref(x)  # one process, both images: the mean over the batch
    mp.start_processes(_ema_rank, args=(2, tmp_path, x, start), nprocs=2, start_method="fork")
    for rank in range(2):
        bases = torch.load(tmp_path / f"bases{rank}.pt", weights_only=True)
        torch.testing.assert_close(bases, ref.bases, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(single.bases, ref.bases, atol=1e-4)


def _ema_rank(rank: int, world_size: int, tmp_path, x: torch.Tensor, start: torch.Tensor) -> None:
    import torch.distributed as dist

    from seg.models.heads.ema import EMAModule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=rank, world_size=world_size)
    try:
        module = EMAModule(16, num_bases=8).train()
        module.bases.copy_(start)
        module(x[rank : rank + 1])
        torch.save(module.bases, tmp_path / f"bases{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_axial_head_kwargs_reach_the_block():
    model = tiny_model("axial", recurrence=2, heads=2, positional=True, max_size=16)
    assert model.head.recurrence == 2 and model.head.axial.positional
    outs = model.train()(torch.randn(1, 3, H, W))
    assert outs["out"].shape == (1, NUM_CLASSES, H, W)
    with pytest.raises(TypeError):  # typos are not swallowed by **kwargs
        tiny_model("ccnet", recurence=3)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_arguments_are_explicit_typed_and_documented(head):
    """The CLI types ``model.head_kwargs`` from the head's own signature and docstring (head_signature): every
    argument must be a named, annotated parameter with an ``Args:`` entry, and the head a DecodeHead."""
    cls, supplied = head_signature(head)
    assert issubclass(cls, DecodeHead) and supplied == {"in_channels", "num_classes"}
    params = inspect.signature(cls).parameters
    assert supplied <= set(params)
    doc = inspect.getdoc(cls) or ""
    for name, p in params.items():
        assert p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL), f"{head}: *{name} hides arguments"
        assert p.annotation is not p.empty, f"{head}: {name} has no type"
        assert f"\n    {name}: " in doc, f"{head}: {name} is not in the docstring's Args"


@pytest.mark.parametrize("head", sorted(k for k, cls in HEADS.items() if issubclass(cls, FCNHead) and k != "fcn"))
def test_fcn_frame_applies_the_context_block_recurrence_times(head):
    """Context heads are FCNHead + one plugged block: it runs ``recurrence`` times (shared weights) between the
    convs, and its parameters live under its mmseg module name."""
    model = tiny_model(head).eval()
    block = getattr(model.head, model.head.context_name)
    assert any(k.startswith(f"head.{model.head.context_name}.") for k in model.state_dict())
    calls = []
    block.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    for recurrence in (1, 3):
        calls.clear()
        model.head.recurrence = recurrence
        with torch.no_grad():
            model(torch.randn(1, 3, H, W))
        assert len(calls) == recurrence and all(c[1] == model.head.channels for c in calls)
    with pytest.raises(ValueError, match="recurrence must be >= 1"):
        model.head.plug_context(model.head.context_name, block, recurrence=0)


@pytest.mark.parametrize(
    "size_in,size_out", [((8, 16), (64, 128)), ((7, 13), (65, 97)), ((33, 17), (9, 40)), ((5, 5), (5, 5))]
)
def test_resize_bilinear_equals_interpolate(size_in, size_out):
    from seg.models.resize import resize_bilinear

    x = torch.randn(2, 3, *size_in, dtype=torch.float32, requires_grad=True)
    ref = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    out = resize_bilinear(x, size_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # fp32 summation order
    g = torch.randn_like(ref)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resize_bilinear(x.bfloat16(), size_out).dtype == torch.float32


def test_model_fast_resize_matches_interpolate():
    model = build_model(backbone="resnet18", head="fcn", num_classes=3, weights=None, channels=16).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        fast = model(x)["out"]
        model.fast_resize = False
        ref = model(x)["out"]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_model_resize_false_returns_feature_resolution_logits():
    """Training asks for logits at feature resolution (the loss resizes them); resizing them gives forward(x)."""
    torch.manual_seed(0)
    model = build_model(
        backbone="resnet18", head="danet", num_classes=3, weights=None, channels=16, pam_channels=8, aux_channels=8
    ).train()
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    low = model(x, resize=False)
    torch.manual_seed(1)  # same dropout masks
    full = model(x)
    assert set(low) == set(full) == {"out", "aux", "pam", "cam"}
    for k in low:
        assert low[k].shape[-2:] == (8, 12) and full[k].shape[-2:] == (64, 96)
        torch.testing.assert_close(
            F.interpolate(low[k], (64, 96), mode="bilinear", align_corners=False), full[k], rtol=1e-4, atol=1e-5
        )


def _fake_cuda_model(head: str):
    """A bf16 model whose tensors are fake CUDA tensors (FakeTensorMode): no GPU needed, no data computed."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        kw = dict(channels=16, pam_channels=8) if head == "danet" else dict(channels=16)
        return build_model("resnet18", head, 5, weights=None, aux_channels=8, **kw)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_cuda_code_paths_trace_with_fake_cuda_tensors(head):
    """The CUDA-only branches (split-head SDPA, bf16 x bf16 -> fp32 CAM energies, the fused loss) run here only
    as fake CUDA tensors: shapes, dtypes and op signatures are checked on every CPU run; numbers need a GPU
    (the CUDA tests in test_functional.py / test_mmseg_compat.py)."""
    import types

    from torch._subclasses.fake_tensor import FakeTensorMode

    from seg.layers.precision import _GramFp32
    from seg.training.losses import SegLoss, _ResizedCrossEntropy

    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cuda"):
        model = _fake_cuda_model(head).train()  # (.to() cannot swap fake parameters: built in place)
        assert next(model.parameters()).device.type == "cuda"
        x = torch.empty(2, 3, 64, 96, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        outs = model(x, resize=False)
        expected = {"out", "aux"} | ({"pam", "cam"} if head == "danet" else set())
        assert set(outs) == expected
        assert all(v.dtype == torch.bfloat16 and v.is_cuda for v in outs.values())
        s = head_output_stride(head, 8)
        assert all(v.shape == ((2, 5, 64 // s, 96 // s) if k == "out" else (2, 5, 8, 12)) for k, v in outs.items())
        mask = torch.zeros(2, 64, 96, dtype=torch.long)
        loss, _ = SegLoss()(outs, mask)
        assert loss.dtype == torch.float32 and loss.is_cuda
        # backward of the custom functions, called directly (the autograd engine needs a real device)
        logits = outs["out"]
        lse = torch.empty(2, 64, 96)
        ctx = types.SimpleNamespace(saved_tensors=(logits, mask, lse.clone(), lse, torch.empty(())), chunk_bytes=2**12)
        grad = _ResizedCrossEntropy.backward(ctx, torch.empty(()))[0]
        assert grad.shape == logits.shape and grad.dtype == torch.bfloat16
        xs = torch.empty(2, 16, 96, dtype=torch.bfloat16)
        energy = _GramFp32.apply(xs)
        assert energy.shape == (2, 16, 16) and energy.dtype == torch.float32
        ctx = types.SimpleNamespace(saved_tensors=(xs,), needs_input_grad=(True,))
        assert _GramFp32.backward(ctx, energy).dtype == torch.bfloat16
        model.eval()
        out = model(x)["out"]
        assert out.shape == (2, 5, 64, 96) and out.dtype == torch.float32


def test_resize_matrix_first_built_in_inference_mode_still_trains():
    """Validation (inference_mode) may build a resize matrix first; the next training step must backprop through it."""
    from seg.models.resize import resize_bilinear

    with torch.inference_mode():
        resize_bilinear(torch.randn(1, 2, 11, 6), (37, 29))  # sizes no other test uses: the cache starts empty here
    x = torch.randn(1, 2, 11, 6, requires_grad=True)
    resize_bilinear(x, (37, 29)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
