"""seg.layers blocks. Tests follow the registries: every key of ATTENTION and FUSION is tested
(shape, gradients, finiteness, bf16 autocast, torch.compile) without new test code."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import seg.layers
from seg.layers import ATTENTION, FUSION, NonLocal2d, create_attention
from seg.layers import functional as AF

C = 16  # channels for every block: small, but each reduction keeps a usable width

# every registry key with its defaults, plus the non-default variants worth covering
VARIANTS = [(key, {}) for key in sorted(ATTENTION) + sorted(FUSION)] + [
    ("axial", dict(positional=True, max_size=16, heads=2)),
    ("axial", dict(positional=True, max_size=(13, 9), heads=1, reduction=4)),
    ("nonlocal", dict(mode="dot_product")),
    ("nonlocal", dict(norm_layer=None, use_scale=False)),
    ("sk", dict(kernel_sizes=(3, 5, 7), groups=4)),
]
IDS = [key + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "") for key, kw in VARIANTS]
# residual context blocks declare that they start as the identity (zero gamma / zero last norm);
# test_identity_at_init_matches_the_flag checks the flag both ways, so a new block cannot skip this list
RESIDUAL = tuple(sorted(key for key, cls in ATTENTION.items() if getattr(cls, "starts_as_identity", False)))


def build(key: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    return create_attention(key, C, **kwargs)


def run(key: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if key in FUSION:  # two inputs
        return block(x, torch.flip(x, dims=(1,)) * 0.5 + 0.1)
    return block(x)


def perturb_zero_params(block: nn.Module) -> None:
    """Residual blocks start with gamma = 0 (or a zero last norm): their inner parameters get no gradient
    and their output ignores the attention. Give every all-zero parameter a non-zero value."""
    with torch.no_grad():
        for p in block.parameters():
            if not p.any():
                p.fill_(0.5)


def has_batchnorm(block: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())


@pytest.mark.parametrize("key,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("b,h,w", [(1, 13, 7), (2, 13, 7), (1, 8, 8), (2, 1, 1), (1, 1, 1), (2, 1, 5)])
def test_shape_and_finite(key, kwargs, train, b, h, w):
    block = build(key, kwargs).train(train)
    perturb_zero_params(block)
    x = torch.randn(b, C, h, w)
    try:
        out = run(key, block, x)
    except ValueError as err:
        # BatchNorm over a single value per channel is undefined in training and torch says so
        # clearly; that is the only failure allowed (blocks whose norms see more values must work)
        if train and b == h == w == 1 and has_batchnorm(block) and "more than 1 value per channel" in str(err):
            return
        raise
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("key,kwargs", VARIANTS, ids=IDS)
def test_every_parameter_gets_a_gradient(key, kwargs):
    block = build(key, kwargs).train()
    perturb_zero_params(block)
    x = torch.randn(2, C, 13, 7, requires_grad=True)
    out = run(key, block, x)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None, f"{key}: {name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{key}: {name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{key}: {name} has an all-zero gradient"


@pytest.mark.parametrize("key", RESIDUAL)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_residual_blocks_start_as_identity(key, train):
    block = create_attention(key, C).train(train)
    x = torch.randn(2, C, 9, 7)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("key", sorted(ATTENTION) + sorted(FUSION))
def test_identity_at_init_matches_the_flag(key):
    """Blocks that do not declare ``starts_as_identity`` must change their input at init (else the flag is missing
    and test_residual_blocks_start_as_identity would silently skip them)."""
    block = create_attention(key, C).eval()
    x = torch.randn(2, C, 9, 7)
    with torch.no_grad():
        identity = torch.equal(run(key, block, x), x)
    assert identity == (key in RESIDUAL), f"{key}: identity at init = {identity}, starts_as_identity flag disagrees"


@pytest.mark.parametrize("key,kwargs", VARIANTS, ids=IDS)
def test_bf16_autocast_cpu(key, kwargs):
    block = build(key, kwargs).eval()
    perturb_zero_params(block)
    x = torch.randn(2, C, 13, 7)
    with torch.no_grad():
        expected = run(key, block, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(key, block, x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    err = (out.float() - expected).norm() / expected.norm()
    assert err < 5e-2, f"{key}: relative error {err:.3g} under bf16 autocast"


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(ATTENTION) + sorted(FUSION))
def test_torch_compile(key):
    block = build(key, {}).eval()
    perturb_zero_params(block)
    x = torch.randn(2, C, 5, 3)
    with torch.no_grad():
        expected = run(key, block, x)
        compiled = torch.compile(block, dynamic=False, fullgraph=True)
        out = run(key, compiled, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key,kwargs", VARIANTS, ids=IDS)
def test_cuda_bf16_autocast_train_step(key, kwargs):
    block = build(key, kwargs).cuda().train()
    perturb_zero_params(block)
    x = torch.randn(2, C, 13, 7, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = run(key, block, x)
    out.float().square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


# ------------------------------------------------------------------------------------------------
# registry


def test_registries_hold_classes_with_channels_first():
    assert not set(ATTENTION) & set(FUSION)
    for key, cls in {**ATTENTION, **FUSION}.items():
        assert isinstance(create_attention(key, 8), cls)
        inputs = len(inspect.signature(cls.forward).parameters) - 1  # minus self
        assert inputs == (2 if key in FUSION else 1), f"{key}: forward takes {inputs} inputs"
        assert cls.__module__.startswith("seg.layers."), key
        assert "arxiv.org" in (__import__(cls.__module__, fromlist=["_"]).__doc__ or ""), (
            f"{key}: docstring names no paper"
        )


def test_every_exported_block_is_registered():
    """Each block class seg.layers exports is a registry entry or a part of one, so the registry-driven tests
    above reach it (a block added to __all__ but not to ATTENTION / FUSION fails here)."""
    registered = {type(create_attention(key, C)) for key in list(ATTENTION) + list(FUSION)}
    parts = {type(m) for key in list(ATTENTION) + list(FUSION) for m in create_attention(key, C).modules()}
    exported = [getattr(seg.layers, name) for name in seg.layers.__all__]
    blocks = {obj for obj in exported if isinstance(obj, type) and issubclass(obj, nn.Module)}
    assert blocks, "seg.layers exports no blocks"
    missing = sorted(cls.__name__ for cls in blocks - registered - parts)
    assert not missing, f"exported but not reachable from ATTENTION / FUSION: {missing}"


def test_create_attention_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        create_attention("squeeze", 8)
    for key in list(ATTENTION) + list(FUSION):
        assert key in str(err.value)


def test_create_attention_none_is_off():
    assert create_attention(None, 8) is None


# ------------------------------------------------------------------------------------------------
# block specifics


def test_axial_positional_sizes():
    block = create_attention("axial", C, positional=True, max_size=(6, 4))
    perturb_zero_params(block)
    assert block(torch.randn(1, C, 6, 4)).shape == (1, C, 6, 4)
    assert block(torch.randn(1, C, 2, 3)).shape == (1, C, 2, 3)
    with pytest.raises(ValueError, match="height 7 exceeds max_size 6"):
        block(torch.randn(1, C, 7, 4))
    with pytest.raises(ValueError, match="width 5 exceeds max_size 4"):
        block(torch.randn(1, C, 6, 5))
    with pytest.raises(ValueError, match="needs max_size"):
        create_attention("axial", C, positional=True)
    with pytest.raises(ValueError, match="divisible by heads"):
        create_attention("axial", C, heads=3)


def test_axial_positional_bias_depends_on_relative_offset_only():
    # the relative term for (query i, key j) uses r[j - i]; check one entry against a hand computation
    block = create_attention("axial", C, positional=True, max_size=8).eval()
    p = block.width
    q = torch.randn(1, p.head_dim, 3, 5)
    k = torch.randn(1, p.head_dim, 3, 5)
    bias = p._relative_bias(q, k)  # (1, H, W, W)
    o, i, j = 2, 1, 4
    expected = q[0, :, o, i] @ p.rel_q[:, j - i + 7] + k[0, :, o, j] @ p.rel_k[:, j - i + 7]
    torch.testing.assert_close(bias[0, o, i, j], expected)


def _nonlocal_mmcv_formula(block: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """mmcv NonLocal2d's forward, written out: pairwise weight from matmul(theta^T, phi)."""
    n = x.shape[0]
    ci = block.inter_channels
    g_x = block.g(x).view(n, ci, -1).permute(0, 2, 1)  # (B, N, Ci)
    theta_x = block.theta(x).view(n, ci, -1).permute(0, 2, 1)  # (B, N, Ci)
    phi_x = block.phi(x).view(n, ci, -1)  # (B, Ci, N)
    pairwise = torch.matmul(theta_x, phi_x)  # (B, N, N)
    if block.mode == "embedded_gaussian":
        if block.use_scale:
            pairwise = pairwise / theta_x.shape[-1] ** 0.5
        pairwise = pairwise.softmax(dim=-1)
    else:
        pairwise = pairwise / pairwise.shape[-1]
    y = torch.matmul(pairwise, g_x).permute(0, 2, 1).reshape(n, ci, *x.shape[2:])  # (B, Ci, H, W)
    return x + block.norm(block.conv_out(y))


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
@pytest.mark.parametrize("use_scale", [True, False])
def test_nonlocal_matches_mmcv_formulation(mode, use_scale):
    block = NonLocal2d(C, reduction=2, use_scale=use_scale, mode=mode).eval()
    with torch.no_grad():
        for conv in (block.g, block.theta, block.phi):
            conv.weight.normal_(std=0.3)
        block.norm.weight.fill_(1.0)
        block.norm.running_mean.normal_()
    x = torch.randn(2, C, 9, 7)
    torch.testing.assert_close(block(x), _nonlocal_mmcv_formula(block, x), rtol=1e-5, atol=1e-5)


def test_pam_and_criss_cross_parameter_names():
    # names pinned in docs/design.md (the mmseg checkpoint conversion maps onto them)
    pam = create_attention("pam", 32, qk_channels=8)
    assert {n for n, _ in pam.named_parameters()} == {
        "query_conv.weight",
        "query_conv.bias",
        "key_conv.weight",
        "key_conv.bias",
        "value_conv.weight",
        "value_conv.bias",
        "gamma",
    }
    assert pam.query_conv.out_channels == 8 and pam.value_conv.out_channels == 32 and pam.gamma.shape == (1,)
    cc = create_attention("criss_cross", 32)
    assert cc.query_conv.out_channels == 4 and cc.key_conv.out_channels == 4 and cc.value_conv.out_channels == 32
    nl = create_attention("nonlocal", 32)
    assert nl.conv_out.bias is None and isinstance(nl.norm, nn.BatchNorm2d) and not nl.norm.weight.any()
    nl = create_attention("nonlocal", 32, norm_layer=None)
    assert nl.conv_out.bias is not None and not nl.conv_out.weight.any()


def test_pam_is_gamma_times_reference_attention_plus_x():
    block = create_attention("pam", C, qk_channels=4).eval()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, C, 7, 5)
    q, k, v = block.query_conv(x), block.key_conv(x), block.value_conv(x)
    expected = 0.7 * AF.position_attention_reference(q, k, v) + x
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_fusion_blocks_reject_mismatched_inputs():
    for key in FUSION:
        with pytest.raises(ValueError, match="same shape"):
            create_attention(key, C)(torch.randn(1, C, 4, 4), torch.randn(1, C, 4, 3))


# ------------------------------------------------------------------------------------------------
# numerical match with mmsegmentation / mmcv, given the same weights (golden tensors written by
# tests/data/make_mm_layers_golden.py with the real mmseg 1.2.2 / mmcv 2.2.0 modules)

GOLDEN = Path(__file__).parent / "data" / "mm_layers_golden.pt"


def mm_to_seg_key(block: str, key: str) -> str:
    """mmseg/mmcv parameter names -> seg.layers names (what the checkpoint conversion does)."""
    key = key.replace("gamma.scale", "gamma")  # mmcv Scale module -> nn.Parameter
    if block == "pam":
        return (
            key.replace("key_project", "key_conv")
            .replace("query_project", "query_conv")
            .replace("value_project", "value_conv")
        )
    if block.startswith("nonlocal"):  # ConvModules: g.conv -> g, conv_out.bn -> norm
        return key.replace(".conv.", ".").replace("conv_out.bn.", "norm.")
    return key


@pytest.mark.parametrize("case", ["pam", "cam", "criss_cross", "nonlocal", "nonlocal_noscale", "nonlocal_dot_nonorm"])
def test_matches_mmseg_mmcv_given_same_weights(case):
    golden = torch.load(GOLDEN, weights_only=True)[case]
    block = create_attention(case.split("_")[0] if case.startswith("nonlocal") else case, C, **golden["kwargs"]).eval()
    # mmcv's Scale holds a 0-d tensor; seg's gamma is shape (1,)
    state = {
        mm_to_seg_key(case, k): v.reshape(1) if k.endswith("gamma.scale") else v
        for k, v in golden["state_dict"].items()
    }
    block.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = block(golden["x"])
    assert not torch.allclose(golden["out"], golden["x"], atol=1e-3)  # the attention term is not negligible
    torch.testing.assert_close(out, golden["out"], rtol=1e-5, atol=1e-5)
