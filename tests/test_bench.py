"""seg.bench runs end to end on CPU and compares implementations that agree (numbers are not asserted: speed belongs
to the benchmark, not the tests)."""

import json

import pytest
import torch

from seg import bench
from seg.bench import cli, cores

TINY = dict(backbone_kwargs=dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64)), channels=16, aux_channels=8)


def _tiny_core_cases() -> list:
    return [(core, "tiny", dict(dims, b=1, h=5, w=7)) for core, _, dims in bench.core_cases(quick=True)[:5]]


@pytest.mark.parametrize("case", _tiny_core_cases(), ids=lambda c: c[0])
def test_the_two_core_implementations_compute_the_same(case):
    """Each core row times seg's implementation against the reference: both must give the same output."""
    core, _, dims = case
    gen = torch.Generator().manual_seed(0)
    mk = lambda c: torch.randn(1, c, dims["h"], dims["w"], generator=gen)  # noqa: E731
    q, k, v = mk(dims.get("qk", dims["v"])), mk(dims.get("qk", dims["v"])), mk(dims["v"])
    seg_out = cores.core_fn(core, "seg")(q, k, v, dims)
    ref_out = cores.core_fn(core, "explicit")(q, k, v, dims)
    assert seg_out.shape == ref_out.shape == v.shape
    torch.testing.assert_close(seg_out, ref_out, rtol=1e-4, atol=1e-5)


def test_core_cases_agree_and_report(tmp_path, monkeypatch):
    tiny = _tiny_core_cases()
    monkeypatch.setattr(cli, "core_cases", lambda quick: tiny)
    monkeypatch.setattr(cli, "in_subprocess", lambda f, *a: f(*a))  # in-process: fast
    results = bench.run(device="cpu", quick=True, parts=("cores",), out=tmp_path, iters=1)
    assert len(results) == 2 * len(tiny)
    assert {r["impl"] for r in results} == {"seg", "explicit"}
    for r in results:
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mb"] >= 0, r
        if r["impl"] == "seg":  # the bench itself checks its fp32 rows against the reference
            assert r["extra"]["max_rel_diff"] < 1e-5, r
    saved = json.loads((tmp_path / "bench_cpu_quick.json").read_text())
    assert saved["results"] == results
    md = (tmp_path / "bench_cpu_quick.md").read_text()
    assert "## Attention cores" in md and "criss_cross_attention" in md


def test_heads_come_from_the_registry():
    from seg.models import HEADS
    from seg.models.smp import SMP_HEADS

    assert bench.HEADS == tuple(HEADS) + tuple(SMP_HEADS)  # the native heads, then every smp architecture


def test_infer_part_optimised_logits_match_the_plain_model():
    rows = bench.run_infer_opt_case("danet", "cpu", ("resnet18", 33, 47), iters=1, **TINY)
    plain, opt = rows
    assert (plain["impl"], opt["impl"]) == ("plain", "opt")
    assert plain["fwd_ms"] > 0 and opt["fwd_ms"] > 0 and opt["peak_mb"] >= 0
    assert opt["extra"]["fused_conv_bn"] > 0
    assert opt["extra"]["max_rel_diff"] < 1e-5 and opt["extra"]["argmax_agree"] == 1.0, opt["extra"]


def test_cpu_bench_command_reports_inference_per_head(tmp_path, capsys):
    """`python -m seg.bench --device cpu` defaults to the infer part: time, peak memory and fidelity per head."""
    bench.main(
        [
            "--device",
            "cpu",
            "--heads",
            "fcn",
            "nonlocal",
            "--backbone",
            "resnet18",
            "--infer_size=[40,56]",
            "--iters",
            "1",
            "--no_channels_last",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "bench_cpu_infer.json").read_text())
    rows = saved["results"]
    assert [(r["name"], r["impl"]) for r in rows] == [
        ("fcn", "plain"),
        ("fcn", "opt"),
        ("nonlocal", "plain"),
        ("nonlocal", "opt"),
    ]
    for r in rows[1::2]:
        assert r["note"] == "fuse_bn" and r["extra"]["max_rel_diff"] < 1e-5, r
    md = (tmp_path / "bench_cpu_infer.md").read_text()
    assert "plain model vs optimize_for_inference" in md and "| nonlocal | resnet18-D8 B=1 40x56 | fuse_bn |" in md


@pytest.mark.slow
def test_train_case_counts_useful_flops_independent_of_the_formulation():
    explicit = bench.run_train_case("danet", "explicit", "cpu", quick=True, iters=1)
    fast = bench.run_train_case("danet", "seg", "cpu", quick=True, iters=1)
    assert explicit["img_s"] > 0 and fast["img_s"] > 0
    assert explicit["extra"]["tflop_per_img"] == pytest.approx(fast["extra"]["tflop_per_img"])
    md = bench.to_markdown(
        [explicit, fast], {"device_name": "cpu", "command": "x", "torch": torch.__version__, "date": "d"}
    )
    assert "| danet |" in md and "x explicit" in md


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.run(device="cuda", out=tmp_path)


def test_cpu_peak_counts_allocations_not_resident_pages():
    """The CPU peak is what was allocated during the call (sampled after every op, backward included)."""
    if bench.malloc_in_use() is None:
        pytest.skip("no glibc mallinfo2 on this platform")

    def fn():
        x = torch.ones(16 * 2**20 // 4, requires_grad=True)  # 16 MiB
        y = (x * 2).exp()  # +16 (x*2), +16 (exp, saved)
        y.sum().backward()  # + grads

    peak = bench.cpu_alloc_peak_mb(fn)
    assert 48 <= peak < 160, peak
    assert bench.cpu_alloc_peak_mb(lambda: torch.ones(4)) < 4


def test_onnx_case_reports_both_runtimes(tmp_path):
    """--onnx: one head, a small input; both latencies, the file size and a difference within the export check."""
    pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[export]'); CI installs it")
    rows = bench.run_onnx_case("fcn", "resnet18", (64, 96), iters=1, **TINY)
    assert [r["impl"] for r in rows] == ["pytorch", "onnxruntime"]
    assert all(r["fwd_ms"] > 0 and r["part"] == "onnx" for r in rows)
    extra = rows[1]["extra"]
    assert extra["file_mb"] > 0 and extra["rel"] <= 1e-4
    md = bench.to_markdown(rows, {"device_name": "cpu", "command": "x", "torch": "t", "date": "d"})
    assert "ONNX Runtime vs PyTorch" in md and "| fcn | resnet18-D8 B=1 64x96 |" in md
