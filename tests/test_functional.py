"""seg.layers.functional: every core against a naive per-pixel loop written from the paper's
definition, efficient vs reference agreement, chunking, autocast, memory (CPU) and the CUDA path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from seg.layers import functional as AF
from seg.layers.precision import _compute_dtype, _GramFp32

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPES = [(2, 5, 4), (1, 3, 7), (1, 1, 1), (2, 1, 6), (1, 6, 1)]  # (B, H, W), odd / non-square / degenerate


def _qkv(b, h, w, cq=3, cv=5, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mk = lambda c: torch.randn(b, c, h, w, generator=g, dtype=dtype).to(device)  # noqa: E731
    return mk(cq), mk(cq), mk(cv)


def _close(a, b, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# naive per-pixel loops, written from the papers' definitions (float64)


def naive_position(q, k, v, scale):
    q, k, v = q.double(), k.double(), v.double()
    b, _, h, w = q.shape
    out = torch.zeros(b, v.shape[1], h, w, dtype=torch.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                # energy of pixel (i, j) with every position, one softmax over all H*W of them
                e = torch.stack([(q[n, :, i, j] * k[n, :, y, x]).sum() * scale for y in range(h) for x in range(w)])
                a = torch.softmax(e, 0)
                vals = torch.stack([v[n, :, y, x] for y in range(h) for x in range(w)])  # (HW, Cv)
                out[n, :, i, j] = (a[:, None] * vals).sum(0)
    return out


def naive_channel(x):
    x = x.double()
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(b):
        feats = x[n].reshape(c, -1)
        for i in range(c):
            e = torch.stack([(feats[i] * feats[j]).sum() for j in range(c)])  # affinity of channel i with j
            a = torch.softmax(e.max() - e, 0)  # DANet: max(energy) - energy
            out[n, i] = sum(a[j] * x[n, j] for j in range(c))
    return out


def naive_criss_cross(q, k, v):
    q, k, v = q.double(), k.double(), v.double()
    b, _, h, w = q.shape
    out = torch.zeros(b, v.shape[1], h, w, dtype=torch.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                # the criss-cross path: whole row i, plus column j without (i, j) itself: H + W - 1 positions
                pos = [(i, x) for x in range(w)] + [(y, j) for y in range(h) if y != i]
                assert len(pos) == h + w - 1
                e = torch.stack([(q[n, :, i, j] * k[n, :, y, x]).sum() for y, x in pos])
                a = torch.softmax(e, 0)
                out[n, :, i, j] = sum(a[t] * v[n, :, y, x] for t, (y, x) in enumerate(pos))
    return out


def naive_axial(q, k, v, axis, scale=1.0, bias=None):
    q, k, v = q.double(), k.double(), v.double()
    b, _, h, w = q.shape
    out = torch.zeros(b, v.shape[1], h, w, dtype=torch.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if axis == -1:  # within row i
                    pos = [(i, x) for x in range(w)]
                    extra = [bias[n, i, j, x] if bias is not None else 0.0 for x in range(w)]
                else:  # within column j
                    pos = [(y, j) for y in range(h)]
                    extra = [bias[n, j, i, y] if bias is not None else 0.0 for y in range(h)]
                e = torch.stack(
                    [(q[n, :, i, j] * k[n, :, y, x]).sum() * scale + extra[t] for t, (y, x) in enumerate(pos)]
                )
                a = torch.softmax(e, 0)
                out[n, :, i, j] = sum(a[t] * v[n, :, y, x] for t, (y, x) in enumerate(pos))
    return out


# ------------------------------------------------------------------------------------------------
# against the naive loops


@pytest.mark.parametrize("b,h,w", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_position_attention_matches_naive(b, h, w, scale):
    q, k, v = _qkv(b, h, w)
    expected = naive_position(q, k, v, scale)
    _close(AF.position_attention(q, k, v, scale=scale), expected)
    _close(AF.position_attention_reference(q, k, v, scale=scale), expected)
    _close(AF.position_attention_chunked(q, k, v, scale=scale, chunk_size=2), expected)
    # the SDPA path (CUDA's) also runs on CPU: checks the head split of v with shared q/k
    for head_dim in (None, 6, 30):  # 5 heads sharing q/k, or one head
        out = AF.position_attention_sdpa(
            q.repeat(1, 2, 1, 1), k.repeat(1, 2, 1, 1), v.repeat(1, 6, 1, 1), scale=scale / 2, head_dim=head_dim
        )
        _close(out, expected.repeat(1, 6, 1, 1))


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_channel_attention_matches_naive(b, h, w):
    x = _qkv(b, h, w, cv=6)[2] * 0.5
    expected = naive_channel(x)
    _close(AF.channel_attention(x), expected)
    _close(AF.channel_attention_reference(x), expected)


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_criss_cross_attention_matches_naive(b, h, w):
    q, k, v = _qkv(b, h, w)
    expected = naive_criss_cross(q, k, v)
    _close(AF.criss_cross_attention(q, k, v), expected)
    _close(AF.criss_cross_attention_reference(q, k, v), expected)


@pytest.mark.parametrize("b,h,w", SHAPES)
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_axial_attention_matches_naive(b, h, w, axis, with_bias):
    q, k, v = _qkv(b, h, w)
    other, length = (h, w) if axis == -1 else (w, h)
    bias = torch.randn(b, other, length, length) if with_bias else None
    expected = naive_axial(q, k, v, axis, scale=0.6, bias=bias)
    _close(AF.axial_attention(q, k, v, axis, scale=0.6, bias=bias), expected)
    _close(AF.axial_attention_reference(q, k, v, axis, scale=0.6, bias=bias), expected)


# ------------------------------------------------------------------------------------------------
# efficient vs reference at a larger size, gradients included


def test_efficient_matches_reference_with_gradients():
    torch.manual_seed(0)
    b, h, w = 2, 9, 11
    cores = {
        "position": (
            lambda q, k, v: AF.position_attention(q, k, v, scale=0.2),
            lambda q, k, v: AF.position_attention_reference(q, k, v, scale=0.2),
        ),
        "position_chunked": (
            lambda q, k, v: AF.position_attention(q, k, v, scale=0.2, chunk_size=13),
            lambda q, k, v: AF.position_attention_reference(q, k, v, scale=0.2),
        ),
        "channel": (
            lambda q, k, v: AF.channel_attention(v * 0.3),
            lambda q, k, v: AF.channel_attention_reference(v * 0.3),
        ),
        "criss_cross": (AF.criss_cross_attention, AF.criss_cross_attention_reference),
        "axial_h": (
            lambda q, k, v: AF.axial_attention(q, k, v, -2),
            lambda q, k, v: AF.axial_attention_reference(q, k, v, -2),
        ),
        "axial_w": (
            lambda q, k, v: AF.axial_attention(q, k, v, -1),
            lambda q, k, v: AF.axial_attention_reference(q, k, v, -1),
        ),
    }
    for name, (fast, ref) in cores.items():
        grads = []
        outs = []
        for fn in (fast, ref):
            q, k, v = (t.requires_grad_() for t in _qkv(b, h, w, cq=4, cv=8, seed=1))
            out = fn(q, k, v)
            out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
            outs.append(out.detach())
            grads.append([t.grad for t in (q, k, v)])
        _close(outs[0], outs[1])
        for g_fast, g_ref in zip(*grads):
            if g_ref is None:
                assert g_fast is None, name
            else:
                _close(g_fast, g_ref, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 44, 45, 1000])
def test_chunked_position_attention_equals_reference(chunk_size):
    q, k, v = _qkv(2, 5, 9, cq=4, cv=6, seed=3)  # 45 positions: chunks that do and do not divide it
    _close(
        AF.position_attention(q, k, v, scale=0.5, chunk_size=chunk_size),
        AF.position_attention_reference(q, k, v, scale=0.5),
    )


def test_chunked_training_recomputes_and_matches_gradients():
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_() for t in _qkv(1, 6, 5, cq=4, cv=6))
    out = AF.position_attention(q, k, v, chunk_size=4)
    out.square().sum().backward()
    g = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    AF.position_attention_reference(q, k, v).square().sum().backward()
    for a, b in zip(g, (q.grad, k.grad, v.grad)):
        _close(a, b, atol=1e-4)


def test_auto_chunk_size():
    assert AF.auto_chunk_size(1, 96 * 128) * 96 * 128 * 4 <= AF.CHUNK_BYTES
    assert AF.auto_chunk_size(64, 10**7) == 1
    assert AF.auto_chunk_size(1, 10) == 10


def test_explicit_attention_switches_to_reference(monkeypatch):
    calls = []
    original = AF.position_attention_reference
    monkeypatch.setattr(AF, "position_attention_reference", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    q, k, v = _qkv(1, 3, 3)
    AF.position_attention(q, k, v)
    assert calls == []
    with AF.explicit_attention():
        AF.position_attention(q, k, v)
    assert calls == [1]
    AF.position_attention(q, k, v)
    assert calls == [1]


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 3, 4)
    with pytest.raises(ValueError, match="same shape"):
        AF.position_attention(q, k[:, :2], v)
    with pytest.raises(ValueError, match="spatial size"):
        AF.criss_cross_attention(q, k, v[..., :3])
    with pytest.raises(ValueError, match="axis"):
        AF.axial_attention(q, k, v, axis=1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        AF.position_attention(q[0], k[0], v[0])


# ------------------------------------------------------------------------------------------------
# bf16 autocast (CPU)


def test_cores_under_bf16_autocast():
    q, k, v = _qkv(2, 7, 5, cq=8, cv=16, seed=4)
    q, k = q * 0.5, k * 0.5
    cases = {
        "position": lambda q, k, v: AF.position_attention(q, k, v),
        "position_chunked": lambda q, k, v: AF.position_attention(q, k, v, chunk_size=3),
        "channel": lambda q, k, v: AF.channel_attention(v),
        "criss_cross": AF.criss_cross_attention,
        "axial": lambda q, k, v: AF.axial_attention(q, k, AF.axial_attention(q, k, v, -2), -1),
    }
    for name, fn in cases.items():
        expected = fn(q, k, v)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v)
        assert out.shape == expected.shape, name
        assert torch.isfinite(out).all(), name
        err = (out.float() - expected).norm() / expected.norm()
        assert err < 3e-2, f"{name}: relative error {err:.3g} under bf16 autocast"


def test_criss_cross_bf16_degenerate_column_has_no_nan():
    # H = 1: the whole column part is masked; the pixel itself (row part) keeps the softmax finite
    q, k, v = (t.bfloat16() for t in _qkv(2, 1, 5))
    assert torch.isfinite(AF.criss_cross_attention(q, k, v)).all()


# ------------------------------------------------------------------------------------------------
# memory: a 96x128 map (B=1, q/k 64, v 512) in fp32 on CPU


_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from seg.layers import functional as AF

    def status_kb(field):  # this process's own counters (ru_maxrss would include the parent's, via fork)
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(field)

    impl, cv = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    q, k = torch.randn(1, 64, 96, 128), torch.randn(1, 64, 96, 128)
    v = torch.randn(1, cv, 96, 128)
    fn = AF.position_attention if impl == "seg" else AF.position_attention_reference
    with torch.no_grad():
        fn(q[..., :4, :4], k[..., :4, :4], v[..., :4, :4])  # warm up lazy allocations of the kernels
        try:
            open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        except OSError:
            pass
        before = status_kb("VmRSS")
        out = fn(q, k, v)
    peak = status_kb("VmHWM")
    print(json.dumps({"extra_mb": (peak - before) / 1024, "finite": bool(torch.isfinite(out).all())}))
    """
)


def _extra_peak_mb(impl: str, cv: int) -> float:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, impl, str(cv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["finite"]
    return res["extra_mb"]


@pytest.mark.slow
def test_position_attention_peak_memory_cpu():
    """The extra peak resident memory of one call (output included) stays well under 300 MB, where the
    explicit HW x HW energies alone take 12288^2 * 4 B = 576 MiB (twice that with the softmax)."""
    seg_mb = _extra_peak_mb("seg", 512)
    print(f"position_attention 96x128 fp32 CPU: extra peak {seg_mb:.0f} MiB")
    assert seg_mb < 150, f"position_attention added {seg_mb:.0f} MiB peak"
    # the same measurement catches the reference (v shrunk to 16 channels to keep it quick: the
    # HW x HW matrices do not depend on v)
    ref_mb = _extra_peak_mb("reference", 16)
    print(f"position_attention_reference 96x128 fp32 CPU: extra peak {ref_mb:.0f} MiB")
    assert ref_mb > 1000


# ------------------------------------------------------------------------------------------------
# CUDA


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_position_attention_sdpa_cuda_matches_reference(dtype):
    q, k, v = _qkv(2, 24, 17, cq=64, cv=512, device="cuda", seed=5)
    q, k = q * 0.2, k * 0.2
    expected = AF.position_attention_reference(q.double(), k.double(), v.double(), scale=1.0)
    out = AF.position_attention(q.to(dtype), k.to(dtype), v.to(dtype), scale=1.0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_position_attention_cuda_uses_fused_kernel(dtype):
    """With the math (materialising) backend disabled, the PAM shapes still run: a fused kernel applies."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(1, 64, 128, cq=64, cv=512, device="cuda", dtype=dtype)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        out = AF.position_attention(q, k, v)
        out.float().sum()  # forward ran
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        AF.position_attention(q, k, v)
    extra = torch.cuda.max_memory_allocated() - base
    hw = 64 * 128
    assert extra < hw * hw * q.element_size() / 2, f"{extra / 2**20:.0f} MiB: the HW x HW matrix was materialised"


@cuda
@pytest.mark.gpu
def test_cores_cuda_bf16_autocast():
    q, k, v = _qkv(2, 13, 9, cq=16, cv=32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for out in (
            AF.position_attention(q, k, v),
            AF.channel_attention(v),
            AF.criss_cross_attention(q, k, v),
            AF.axial_attention(q, k, v, -1),
        ):
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("head_dim", [None, 8, 32])
def test_position_attention_sdpa_layouts_match_reference(channels_last, head_dim):
    # The SDPA path reads channels_last v as a view and returns channels_last output: same values, same grads.
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    q, k = (torch.randn(2, 8, 5, 7).contiguous(memory_format=fmt) for _ in range(2))
    v = torch.randn(2, 32, 5, 7).contiguous(memory_format=fmt).requires_grad_()
    out = AF.position_attention_sdpa(q, k, v, scale=0.5, head_dim=head_dim)
    ref = AF.position_attention_reference(q, k, v, scale=0.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad(out, v, g)[0], torch.autograd.grad(ref, v, g)[0], rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------------------
# channel attention: fp32 energies without an fp32 copy of x (``_GramFp32``)


def _channel_attention_old(x):
    """The formulation ``channel_attention`` had before ``_GramFp32``: autograd through ``x.float()``."""
    b, c, h, w = x.shape
    dtype = _compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.flatten(2).float()
        energy = torch.bmm(xf, xf.transpose(1, 2))
        attn = torch.softmax(-energy, dim=-1)
        out = torch.bmm(attn.to(dtype), x.flatten(2).to(dtype))
    return out.reshape(b, c, h, w)


def _out_and_grad(fn, x, g):
    x = x.detach().requires_grad_()
    out = fn(x)
    (gx,) = torch.autograd.grad(out, x, g.to(out.dtype))
    return out.detach(), gx


def test_channel_attention_gradcheck_float64():
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
    assert torch.autograd.gradcheck(AF.channel_attention, (x.requires_grad_(),))
    xs = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GramFp32.apply, (xs,))
    assert torch.autograd.gradgradcheck(_GramFp32.apply, (xs,))  # its backward is differentiable too
    assert _GramFp32.apply(xs).dtype == torch.float64


def test_channel_attention_equals_old_formulation_fp32():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 9, 11, generator=g) * 0.2
    up = torch.randn(2, 16, 9, 11, generator=g)
    out, gx = _out_and_grad(AF.channel_attention, x, up)
    out_old, gx_old = _out_and_grad(_channel_attention_old, x, up)
    torch.testing.assert_close(out, out_old, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32])
def test_channel_attention_equals_old_formulation_bf16_autocast(input_dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 16, 9, 11, generator=g) * 0.3).to(input_dtype)
    up = torch.randn(2, 16, 9, 11, generator=g)
    results = []
    for fn in (AF.channel_attention, _channel_attention_old):
        xr = x.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o = fn(xr)
        (gr,) = torch.autograd.grad(o, xr, up.to(o.dtype))  # backward outside autocast, as recommended
        results += [o.detach(), gr]
    out, gx, out_old, gx_old = results
    assert out.dtype == out_old.dtype == torch.bfloat16
    assert gx.dtype == gx_old.dtype == input_dtype
    # same fp32 energies and softmax: the forward is the same computation
    torch.testing.assert_close(out, out_old, rtol=0, atol=0)
    # gradient: one fp32 matmul (G + G^T) X instead of G X + G^T X, then the same roundings
    torch.testing.assert_close(gx.float(), gx_old.float(), rtol=1.6e-2, atol=1e-2 * gx_old.abs().max().item())
    assert (gx.float() - gx_old.float()).norm() / gx_old.float().norm() < 1e-3


def _saved_storages(fn, x):
    """Distinct storages autograd saves for backward while running fn(x) under CPU bf16 autocast."""
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        saved[s.data_ptr()] = (s.nbytes(), t.dtype, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn(x)
    return list(saved.values())


def test_channel_attention_saves_no_fp32_copy_of_x():
    b, c, h, w = 2, 8, 16, 16
    x = torch.randn(b, c, h, w).bfloat16().requires_grad_()
    saved = _saved_storages(AF.channel_attention, x)
    fp32_copy = b * c * h * w * 4
    assert not [s for s in saved if s[1] == torch.float32 and s[2] == x.numel()], saved
    total = sum(s[0] for s in saved)
    # x itself (bf16) + the C x C attention (fp32 for softmax, bf16 for the bmm)
    assert total < fp32_copy, f"{total} bytes saved, an fp32 copy of x alone is {fp32_copy}"
    assert total == x.numel() * 2 + b * c * c * (4 + 2)


@pytest.mark.slow
def test_channel_attention_torch_compile_with_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 5, 3, generator=g) * 0.3
    up = torch.randn(2, 8, 5, 3, generator=g)
    compiled = torch.compile(AF.channel_attention, dynamic=False, fullgraph=True)
    out, gx = _out_and_grad(compiled, x, up)
    out_ref, gx_ref = _out_and_grad(_channel_attention_old, x, up)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_channel_attention_cuda_bf16_matches_fp32(compiled):
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 64, 24, 17, generator=g) * 0.2).bfloat16().cuda()  # exact bf16 values
    up = torch.randn(2, 64, 24, 17, generator=g).cuda()
    # energies: bf16 inputs, fp32 output, equal to the fp32 product up to summation order
    xs = x.flatten(2)
    energy = _GramFp32.apply(xs)
    assert energy.dtype == torch.float32
    xd = xs.double()  # float64 reference: independent of the TF32 setting
    torch.testing.assert_close(energy.double(), torch.bmm(xd, xd.transpose(1, 2)), rtol=1e-5, atol=1e-4)
    fn = torch.compile(AF.channel_attention, dynamic=False, fullgraph=True) if compiled else AF.channel_attention
    xr = x.detach().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn(xr)
    (gx,) = torch.autograd.grad(out, xr, up.to(out.dtype))
    assert out.dtype == gx.dtype == torch.bfloat16
    out_ref, gx_ref = _out_and_grad(_channel_attention_old, x.float(), up)  # fp32 throughout
    assert (out.float() - out_ref).norm() / out_ref.norm() < 1e-2
    assert (gx.float() - gx_ref).norm() / gx_ref.norm() < 2e-2
    torch.testing.assert_close(gx.float(), gx_ref, rtol=3e-2, atol=3e-2 * gx_ref.abs().max().item())


def test_chunked_inference_with_peaky_energies_equals_float64():
    """Unscaled energies spread over thousands (DANet's PAM on real features): most of each softmax row
    underflows. The inference path's exp floor (a speed fix) must not change the result at fp32 precision;
    compared with the definition computed in float64."""
    q, k, v = _qkv(1, 6, 10, cq=8, cv=5, seed=4)
    q, k = q * 30, k * 30  # energies of +-several thousand: nearly one-hot rows, the rest far below exp's range
    with torch.inference_mode():
        out = AF.position_attention(q, k, v, scale=1.0, chunk_size=7)
    qd, kd, vd = (t.double().flatten(2) for t in (q, k, v))
    attn = torch.softmax(qd.transpose(1, 2) @ kd, dim=-1)  # (B, N, N)
    expected = (vd @ attn.transpose(1, 2)).reshape(v.shape)
    assert (attn < 1e-38).float().mean() > 0.5  # the case this is about: most weights underflow
    _close(out, expected, rtol=1e-6, atol=1e-6)
