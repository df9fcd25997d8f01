"""`python -m seg.bench`: speed and memory of seg's attention cores and whole models.

Two parts, printed as tables and written as JSON + Markdown:

* **cores** - each functional attention core (`position_attention` as used by DANet's PAM and by
  Non-local, `criss_cross_attention`, `axial_attention`, `channel_attention`): forward and
  forward+backward time and peak memory, seg's implementation against the explicit-energy
  reference (the formulation mmseg/mmcv compute), at Cityscapes training shapes
  (B=8, 512 channels, 64x128 features) and whole-image inference shapes (B=1, 128x256 features).
* **models** - whole-model training throughput (img/s) and peak memory for every head on R50-D8
  at 512x1024, batch 8: "explicit fp32 eager" (what mmseg runs by default: explicit attention
  energies, fp32, NCHW, F.interpolate + F.cross_entropy) against seg's default fast path (bf16
  autocast, channels_last, cuDNN benchmark, fused attention, the training loss of ``train.py``:
  fused resize + cross-entropy). Also whole-image inference memory (1024x2048) and the fraction of
  the GPU's dense bf16 FLOP/s the training step reaches.

`--onnx` (needs the ``export`` extra) instead times whole-image inference per head in ONNX Runtime (CPU)
beside PyTorch eager (fp32, CPU) on the same random-init model, with the ``.onnx`` file size and the
largest difference of the two outputs (``run_onnx_case``).

`--quick` shrinks every shape (small backbone, small features) so the whole run takes about a
minute on a CPU; its numbers only show that the harness works.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above what was allocated before the
measured call. On CPU, the peak of the bytes malloc holds (glibc ``mallinfo2``), sampled after
every aten op of the call, above what it held before: allocated memory, like CUDA's figure (so
cases can share one process; ``--quick`` takes about 35 s on 2 cores). Where ``mallinfo2`` is
missing, and for compiled models, each case runs in a fresh subprocess and reports the growth of
its peak resident set size (VmHWM, reset just before the call), which also counts pages malloc
has freed but kept.

`--bf16` runs seg's path under bf16 autocast on the CPU too (on CUDA it always does): a CPU proxy
for the memory of the GPU fast path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from seg.layers import functional as AF
from seg.models import HEADS as HEAD_CLASSES
from seg.models import all_head_names, recipe_output_stride
from seg.models.smp import backbone_error, is_smp_head

# Dense bf16 tensor-core peak (FLOP/s, without sparsity) of GPUs we know, matched on device name.
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "4090": 165e12,
}

HEADS = all_head_names()  # every registered head: the native ones, then smp's architectures ('smp:Unet' ...)


@dataclass
class Result:
    part: str  # 'core' | 'train' | 'infer'
    name: str  # core or head name
    shape: str
    impl: str  # 'seg' | 'explicit'
    dtype: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_mb: float | None = None
    img_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (seg.bench measures CPU memory on Linux only)")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be reset
    # and, in a child process, starts at the parent's RSS: it would hide small peaks.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _malloc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (``mallinfo2``: heap chunks + mmapped chunks), or None where it is missing."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                  "keepcost")

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in fields]

        libc.mallinfo2.restype = MallInfo2
        libc.mallinfo2()
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


def _cpu_alloc_peak_mb(fn: Callable[[], object]) -> float | None:
    """Peak of the bytes malloc holds for the process, sampled after every aten op of one call of `fn`
    (forward and backward), above the bytes held before the call: what is allocated, like CUDA's
    ``max_memory_allocated``, unlike the resident set, which keeps pages malloc has freed. Temporaries
    that live inside one op are not seen. None where glibc's ``mallinfo2`` is missing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    in_use = _malloc_in_use()
    if in_use is None:
        return None

    class Sampler(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            Sampler.peak = max(Sampler.peak, in_use())
            return out

    base = in_use()
    Sampler.peak = base
    with Sampler():
        fn()
    return (Sampler.peak - base) / 2**20


def _peak_mb(fn: Callable[[], object], device: torch.device, per_op: bool = True) -> float:
    """Peak extra memory (MiB) of one call of `fn` (see module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if per_op:
        peak = _cpu_alloc_peak_mb(fn)
        if peak is not None:
            return peak
    _reset_peak_rss()
    base = _status_mb("VmRSS")
    fn()
    return max(0.0, _status_mb("VmHWM") - base)


def _in_subprocess(target, *args):
    """Run target(*args) in a fresh process (CPU peak memory must not see earlier cases)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(target, args)


# --------------------------------------------------------------------------------------------
# attention cores


def core_cases(quick: bool) -> list[tuple[str, str, dict]]:
    """(core, shape label, dims) at Cityscapes training and whole-image inference shapes."""
    if quick:
        shapes = {"train B=2 16x32": (2, 16, 32), "infer B=1 32x64": (1, 32, 64)}
        c, qk, nl = 64, 16, 32
    else:
        shapes = {"train B=8 64x128": (8, 64, 128), "infer B=1 128x256": (1, 128, 256)}
        c, qk, nl = 512, 64, 256
    cases = []
    for label, (b, h, w) in shapes.items():
        dims = dict(b=b, h=h, w=w)
        cases += [
            ("pam position_attention", label, dict(dims, qk=qk, v=c, scale=1.0)),
            ("nonlocal position_attention", label, dict(dims, qk=nl, v=nl, scale=nl**-0.5)),
            ("criss_cross_attention", label, dict(dims, qk=qk, v=c)),
            ("axial_attention", label, dict(dims, qk=qk, v=c)),
            ("channel_attention", label, dict(dims, v=c)),
        ]
    return cases


def _core_fn(core: str, impl: str) -> Callable:
    ref = impl == "explicit"
    if "position_attention" in core:
        f = AF.position_attention_reference if ref else AF.position_attention
        return lambda q, k, v, d: f(q, k, v, scale=d["scale"])
    if core == "criss_cross_attention":
        f = AF.criss_cross_attention_reference if ref else AF.criss_cross_attention
        return lambda q, k, v, d: f(q, k, v)
    if core == "axial_attention":
        f = AF.axial_attention_reference if ref else AF.axial_attention
        # height then width, as the axial block runs it
        return lambda q, k, v, d: f(q, k, f(q, k, v, axis=-2), axis=-1)
    if core == "channel_attention":
        f = AF.channel_attention_reference if ref else AF.channel_attention
        return lambda q, k, v, d: f(v)
    raise KeyError(core)


def run_core_case(core: str, label: str, dims: dict, impl: str, device: str, dtype: str, iters: int) -> dict:
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    b, h, w = dims["b"], dims["h"], dims["w"]
    qk = dims.get("qk", dims["v"])
    mk = lambda c: torch.randn(b, c, h, w, device=dev, dtype=dt, requires_grad=True)  # noqa: E731
    q, k, v = mk(qk), mk(qk), mk(dims["v"])
    fn = _core_fn(core, impl)
    res = Result("core", core, label, impl, dtype)

    def fwd():
        with torch.no_grad():
            return fn(q, k, v, dims)

    def fwd_bwd():
        out = fn(q, k, v, dims)
        out.float().sum().backward()
        q.grad = k.grad = v.grad = None

    try:
        res.peak_mb = _peak_mb(fwd_bwd, dev)
        res.fwd_ms = 1e3 * _time(fwd, dev, 1, iters)
        res.fwd_bwd_ms = 1e3 * _time(fwd_bwd, dev, 1, iters)
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)


# --------------------------------------------------------------------------------------------
# whole models


@contextlib.contextmanager
def _explicit(enabled: bool):
    if enabled:
        with AF.explicit_attention():
            yield
    else:
        yield


def _stride(head: str) -> int:
    """The backbone's output stride in the head's recipe: 8 (dilated, "-D8"), UPerNet's undilated 32, an smp
    architecture's own default."""
    return recipe_output_stride(head)


def _build(head: str, backbone: str, num_classes: int, device: torch.device, fast: bool, **kw):
    """fast: seg's path (channels_last, matmul logit resize); else mmseg's (NCHW, F.interpolate)."""
    from seg.models import build_model

    model = build_model(backbone=backbone, head=head, num_classes=num_classes, output_stride=_stride(head),
                        aux=head in HEAD_CLASSES, weights=None, **kw)  # smp architectures have no aux head
    model = model.to(device)
    model.fast_resize = fast
    if fast:
        model = model.to(memory_format=torch.channels_last)
    return model


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on an input of ``shape``, counted like the training cases
    (``torch.utils.flop_counter``, explicit attention formulation, resize by F.interpolate: no FLOPs for it).
    Used by ``seg.compare`` for its cost column; the model's mode and resize path are restored."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training, fast = model.training, getattr(model, "fast_resize", None)
    model.eval()
    if fast is not None:
        model.fast_resize = False
    try:
        x = torch.zeros(shape, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _explicit(True):
            model(x)
    finally:
        model.train(was_training)
        if fast is not None:
            model.fast_resize = fast
    return counter.get_total_flops()


def _loss(outputs: dict, mask: torch.Tensor) -> torch.Tensor:
    """mmseg's loss: cross-entropy on each output at input resolution (aux weighted 0.4)."""
    loss = 0.0
    for name, logits in outputs.items():
        weight = 0.4 if name == "aux" else 1.0
        loss = loss + weight * F.cross_entropy(logits.float(), mask, ignore_index=255)
    return loss


def train_shape(quick: bool, backbone: str | None = None, batch: int | None = None,
                crop: tuple[int, int] | None = None) -> tuple[str, int, int, int]:
    """(backbone, batch, height, width) of the training cases: R50-D8 B=8 512x1024 (quick: resnet18 B=2 64x128)."""
    b0, n0, (h0, w0) = ("resnet18", 2, (64, 128)) if quick else ("resnet50c", 8, (512, 1024))
    h, w = crop or (h0, w0)
    return backbone or b0, batch or n0, h, w


def run_train_case(head: str, impl: str, device: str, quick: bool, iters: int,
                   shape: tuple[str, int, int, int] | None = None, bf16: bool = False) -> dict:
    """Training step throughput: forward, loss (all outputs), backward, SGD step.

    explicit: model(x) -> logits at input resolution (F.interpolate) -> F.cross_entropy per output (mmseg).
    seg: model(x, resize=False) -> seg.training.SegLoss (fused resize + cross-entropy), as ``train.py`` trains.
    """
    from seg.training.losses import SegLoss

    dev = torch.device(device)
    fast = impl != "explicit"
    backbone, b, hh, ww = shape or train_shape(quick)
    nc = 19
    use_bf16 = fast and (dev.type == "cuda" or bf16)
    torch.backends.cudnn.benchmark = fast
    torch.manual_seed(0)
    eager = _build(head, backbone, nc, dev, fast=fast).train()
    model = torch.compile(eager) if impl == "seg+compile" else eager
    opt = torch.optim.SGD(eager.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    seg_loss = SegLoss()
    x = torch.randn(b, 3, hh, ww, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, nc, (b, hh, ww), device=dev)
    res = Result("train", head, f"{backbone}-D{_stride(head)} B={b} {hh}x{ww}", impl, "bf16" if use_bf16 else "fp32")

    def step():
        with _explicit(not fast), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = seg_loss(model(x, resize=False), y)[0] if fast else _loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        res.peak_mb = _peak_mb(step, dev, per_op=impl != "seg+compile")
        sec = _time(step, dev, 2 if quick else 5, iters)
        res.fwd_bwd_ms = 1e3 * sec
        res.img_s = b / sec
        from torch.utils.flop_counter import FlopCounterMode

        # Useful FLOPs: counted on the eager model with the explicit formulation (attention and resize), so that work a fused
        # kernel repeats (e.g. q.k once per v head in split-head SDPA) does not inflate the utilisation.
        eager.fast_resize = False  # F.interpolate: no FLOPs counted for resizing, as in mmseg
        with FlopCounterMode(display=False) as counter:
            with _explicit(True), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = _loss(eager(x), y)
            loss.backward()
        eager.fast_resize = fast
        opt.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
        res.tflops = flops / sec / 1e12
        res.extra["tflop_per_img"] = flops / b / 1e12
        peak = _gpu_peak_flops(dev)
        if peak and use_bf16:
            res.mfu = flops / sec / peak
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)


def run_infer_case(head: str, impl: str, device: str, quick: bool, iters: int,
                   shape: tuple[str, int, int] | None = None, bf16: bool = False) -> dict:
    """Whole-image inference (one 1024x2048 image) time and peak memory."""
    dev = torch.device(device)
    fast = impl == "seg"
    backbone, hh, ww = shape or (("resnet18", 128, 256) if quick else ("resnet50c", 1024, 2048))
    nc = 19
    use_bf16 = fast and (dev.type == "cuda" or bf16)
    torch.backends.cudnn.benchmark = fast
    torch.manual_seed(0)
    model = _build(head, backbone, nc, dev, fast=fast).eval()
    x = torch.randn(1, 3, hh, ww, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    res = Result("infer", head, f"{backbone}-D{_stride(head)} B=1 {hh}x{ww}", impl, "bf16" if use_bf16 else "fp32")

    def fwd():
        with torch.inference_mode(), _explicit(not fast), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            return model(x)["out"]

    try:
        res.peak_mb = _peak_mb(fwd, dev)
        res.fwd_ms = 1e3 * _time(fwd, dev, 1, iters)
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)


def run_onnx_case(head: str, backbone: str, size: tuple[int, int], iters: int, **build_kwargs) -> list[dict]:
    """Whole-image latency of one head: PyTorch eager (fp32, CPU, default attention cores) and ONNX Runtime
    (CPU) on a static ``seg.export`` of the same random-init model; plus file size and output difference."""
    import tempfile

    import onnxruntime as ort

    from seg.export import DeployModel, export_model

    torch.manual_seed(0)
    deploy = DeployModel(_build(head, backbone, 19, torch.device("cpu"), fast=True, **build_kwargs)).eval()
    x = deploy.example(1, size)
    label = f"{backbone}-D{_stride(head)} B=1 {size[0]}x{size[1]}"
    with torch.inference_mode():
        ref = deploy(x)
        torch_ms = 1e3 * _time(lambda: deploy(x), torch.device("cpu"), 1, iters)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_model(deploy, "onnx", Path(tmp) / f"{head}.onnx", size)
        export_s = time.perf_counter() - t0
        file_mb = path.stat().st_size / 2**20
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, xn = session.get_inputs()[0].name, x.numpy()
    out = session.run(None, {name: xn})[0]
    ort_ms = 1e3 * _time(lambda: session.run(None, {name: xn}), torch.device("cpu"), 1, iters)
    max_abs = float((torch.from_numpy(out) - ref).abs().max())
    extra = {"file_mb": file_mb, "export_s": export_s, "max_abs": max_abs, "rel": max_abs / float(ref.abs().max())}
    return [asdict(Result("onnx", head, label, "pytorch", "float32", fwd_ms=torch_ms)),
            asdict(Result("onnx", head, label, "onnxruntime", "float32", fwd_ms=ort_ms, extra=extra))]


def _onnx_markdown(results: list[dict]) -> list[str]:
    by = {(r["name"], r["impl"]): r for r in results if r["part"] == "onnx"}
    heads = list(dict.fromkeys(name for name, _ in by))
    if not heads:
        return []
    lines = ["## Whole-image inference: ONNX Runtime vs PyTorch (CPU, fp32)", "",
             "| head | shape | PyTorch ms | ONNX Runtime ms | ORT / PyTorch | .onnx MiB | max abs diff | max rel diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for head in heads:
        pt, rt = by[(head, "pytorch")], by[(head, "onnxruntime")]
        e = rt["extra"]
        lines.append(f"| {head} | {pt['shape']} | {_fmt(pt['fwd_ms'])} | {_fmt(rt['fwd_ms'])} | "
                     f"{_fmt(rt['fwd_ms'] / pt['fwd_ms'], 2)} | {_fmt(e['file_mb'])} | {e['max_abs']:.2g} | {e['rel']:.2g} |")
    return lines + [""]


def _gpu_peak_flops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, value in GPU_BF16_PEAK.items():
        if key in name:
            return value
    return None


# --------------------------------------------------------------------------------------------
# reporting


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if 0 < abs(v) < 10 ** -digits * 5:  # e.g. CPU img/s: 3 significant digits instead of "0.0"/"0.1"
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# seg.bench on {meta['device_name']}", "", f"`{meta['command']}` - torch {meta['torch']}, {meta['date']}", ""]
    cores = [r for r in results if r["part"] == "core"]
    if cores:
        lines += ["## Attention cores", "", "| core | shape | impl | dtype | fwd ms | fwd+bwd ms | peak MiB | note |", "|---|---|---|---|---:|---:|---:|---|"]
        for r in cores:
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {_fmt(r['fwd_ms'], 2)} | "
                f"{_fmt(r['fwd_bwd_ms'], 2)} | {_fmt(r['peak_mb'], 0)} | {r['note']} |"
            )
        lines.append("")
    train = [r for r in results if r["part"] == "train"]
    if train:
        fcn = {r["impl"]: r for r in train if r["name"] == "fcn"}
        lines += [
            "## Training step (forward + backward + SGD)",
            "",
            "| head | shape | impl | dtype | img/s | x FCN (same impl) | x explicit | peak MiB | x FCN mem | TFLOP/s | MFU | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        by = {(r["name"], r["impl"]): r for r in train}
        for r in train:
            base = fcn.get(r["impl"])
            expl = by.get((r["name"], "explicit"))
            rel = r["img_s"] / base["img_s"] if base and base["img_s"] and r["img_s"] else None
            spd = r["img_s"] / expl["img_s"] if expl and expl["img_s"] and r["img_s"] else None
            mem = r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] and r["peak_mb"] else None
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {_fmt(r['img_s'])} | {_fmt(rel, 2)} | "
                f"{_fmt(spd, 2)} | {_fmt(r['peak_mb'], 0)} | {_fmt(mem, 2)} | {_fmt(r['tflops'])} | "
                f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], 0)}{'%' if r['mfu'] else ''} | {r['note']} |"
            )
        lines.append("")
    infer = [r for r in results if r["part"] == "infer"]
    if infer:
        lines += ["## Whole-image inference", "", "| head | shape | impl | dtype | ms | peak MiB | mem / explicit | note |", "|---|---|---|---|---:|---:|---:|---|"]
        by = {(r["name"], r["impl"]): r for r in infer}
        for r in infer:
            expl = by.get((r["name"], "explicit"))
            ratio = r["peak_mb"] / expl["peak_mb"] if expl and expl["peak_mb"] and r["peak_mb"] is not None else None
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {_fmt(r['fwd_ms'])} | {_fmt(r['peak_mb'], 0)} | "
                f"{_fmt(ratio, 3)} | {r['note']} |"
            )
        lines.append("")
    lines += _onnx_markdown(results)
    return "\n".join(lines)


def run(
    device: str = "cpu",
    quick: bool = False,
    parts=("cores", "models"),
    heads=HEADS,
    out: str | Path = "bench_results",
    iters: int | None = None,
    compile: bool = False,
    backbone: str | None = None,
    batch: int | None = None,
    crop: tuple[int, int] | None = None,
    infer_size: tuple[int, int] | None = None,
    command: str | None = None,
    bf16: bool = False,
    onnx_size: tuple[int, int] | None = None,
) -> list[dict]:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("seg.bench: --device cuda asked for, but torch sees no CUDA device. Use --device cpu.")
    iters = iters or (2 if quick else (10 if device == "cuda" else 3))
    # CPU: malloc's bytes in use are measured against the bytes held before the call, so cases can share this
    # process; the resident-set fallback (no mallinfo2, compiled models) needs a fresh process per case.
    rss_only = device == "cpu" and _malloc_in_use() is None

    def call(f, *a):
        compiled = f is run_train_case and a[1] == "seg+compile"
        return _in_subprocess(f, *a) if device == "cpu" and (rss_only or compiled) else f(*a)
    core_dtype = "bfloat16" if device == "cuda" or bf16 else "float32"
    results: list[dict] = []

    def report(r):
        results.append(r)
        print(
            f"{r['part']:5s} {r['name']:28s} {r['shape']:28s} {r['impl']:8s} {r['dtype']:8s} "
            f"fwd {_fmt(r['fwd_ms'], 2):>8s} ms  fwd+bwd {_fmt(r['fwd_bwd_ms'], 2):>8s} ms  "
            f"peak {_fmt(r['peak_mb'], 0):>7s} MiB  img/s {_fmt(r['img_s']):>6s} {r['note']}",
            flush=True,
        )

    if "cores" in parts:
        for core, label, dims in core_cases(quick):
            for impl in ("explicit", "seg"):
                report(call(run_core_case, core, label, dims, impl, device, core_dtype, iters))
    model_backbone = train_shape(quick, backbone, batch, crop)[0]
    skipped = {h: backbone_error(h, model_backbone) for h in heads if is_smp_head(h)}  # DPT needs a ViT
    for head, reason in skipped.items():
        if reason:
            print(f"skip  {head}: {reason}", flush=True)
    heads = [h for h in heads if not skipped.get(h)]
    if "models" in parts:
        impls = ("explicit", "seg") + (("seg+compile",) if compile else ())
        tshape = train_shape(quick, backbone, batch, crop)
        ih, iw = infer_size or ((128, 256) if quick else (1024, 2048))
        for head in heads:
            for impl in impls:
                report(call(run_train_case, head, impl, device, quick, iters, tshape, bf16))
        for head in [h for h in heads if h in ("danet", "nonlocal")] or list(heads)[:1]:
            for impl in ("explicit", "seg"):
                report(call(run_infer_case, head, impl, device, quick, iters, (tshape[0], ih, iw), bf16))
        if device == "cuda":
            torch.cuda.empty_cache()
    if "onnx" in parts:
        size = onnx_size or ((128, 256) if quick else (512, 1024))
        for head in heads:
            for r in run_onnx_case(head, backbone or ("resnet18" if quick else "resnet50c"), size, iters):
                report(r)

    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command or ("python -m seg.bench --device " + device + (" --quick" if quick else "")
                               + (" --compile" if compile else "") + (" --onnx" if "onnx" in parts else "")),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{device}{'_onnx' if 'onnx' in parts else ''}{'_quick' if quick else ''}{'_bf16' if bf16 and device == 'cpu' else ''}{'_compile' if compile else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = to_markdown(results, meta)
    (out / f"{stem}.md").write_text(md)
    print("\n" + md)
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m seg.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shapes: a harness check that runs in about a minute on CPU")
    p.add_argument("--parts", nargs="+", choices=["cores", "models", "onnx"], default=None,
                   help="default: cores models (with --onnx: onnx only)")
    p.add_argument("--onnx", action="store_true",
                   help="ONNX Runtime (CPU) whole-image latency per head beside PyTorch's (size: --infer-size, "
                        "default 512 1024; needs pip install -e '.[export]')")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--iters", type=int, default=None, help="timed iterations per case (median is reported)")
    p.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown results")
    p.add_argument("--compile", action="store_true", help="also time the training step under torch.compile")
    p.add_argument("--backbone", default=None, help="timm backbone of the model cases (default resnet50c; quick: resnet18)")
    p.add_argument("--batch", type=int, default=None, help="training batch size (default 8; quick: 2)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="training crop (default 512 1024; quick: 64 128)")
    p.add_argument("--infer-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="whole-image inference size (default 1024 2048; quick: 128 256)")
    p.add_argument("--bf16", action="store_true",
                   help="seg's path under bf16 autocast on CPU too (always on CUDA): a CPU proxy of GPU memory")
    a = p.parse_args(argv)
    command = "python -m seg.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = a.parts or (["onnx"] if a.onnx else ["cores", "models"])
    if a.onnx and "onnx" not in parts:
        parts.append("onnx")
    infer_size = None if a.infer_size is None else tuple(a.infer_size)
    run(a.device, a.quick, parts, a.heads, a.out, a.iters, a.compile, a.backbone, a.batch,
        None if a.crop is None else tuple(a.crop), infer_size, command, a.bf16, onnx_size=infer_size)


if __name__ == "__main__":
    main()
