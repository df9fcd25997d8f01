"""``python -m seg.bench``: run the selected parts, print one line per row, write JSON + Markdown."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from seg.command_line import ArgParser, hw
from seg.data.transforms import CITYSCAPES_CROP
from seg.models import all_head_names, get_head

from .cores import core_cases, run_core_case
from .inference import infer_shape, run_infer_opt_case
from .memory import in_subprocess, malloc_in_use
from .models import run_infer_case, run_train_case, train_shape
from .onnx_case import run_onnx_case
from .report import fmt, to_markdown

__all__ = ["HEADS", "main", "run"]

HEADS = all_head_names()  # every registered head: the native ones, then smp's architectures ('smp:Unet' ...)


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
    fuse_bn: bool = True,
    channels_last: bool = True,
) -> list[dict]:
    """Run the ``parts`` (``cores``, ``models``, ``infer``, ``onnx``), print a line per row, write
    ``<out>/bench_<device>[...].json`` and ``.md``; returns the rows. ``fuse_bn`` / ``channels_last`` / ``bf16`` are
    the ``optimize_for_inference`` levers of the ``infer`` part."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("seg.bench: --device cuda asked for, but torch sees no CUDA device. Use --device cpu.")
    iters = iters or (2 if quick else (10 if device == "cuda" else 3))
    # CPU: malloc's bytes in use are measured against the bytes held before the call, so cases can share this
    # process; the resident-set fallback (no mallinfo2, compiled models) needs a fresh process per case.
    rss_only = device == "cpu" and malloc_in_use() is None

    def call(f, *a):
        compiled = f is run_train_case and a[1] == "seg+compile"
        return in_subprocess(f, *a) if device == "cpu" and (rss_only or compiled) else f(*a)

    core_dtype = "bfloat16" if device == "cuda" or bf16 else "float32"
    results: list[dict] = []

    def report(r):
        results.append(r)
        print(
            f"{r['part']:5s} {r['name']:28s} {r['shape']:28s} {r['impl']:8s} {r['dtype']:8s} "
            f"fwd {fmt(r['fwd_ms'], 2):>8s} ms  fwd+bwd {fmt(r['fwd_bwd_ms'], 2):>8s} ms  "
            f"peak {fmt(r['peak_mb'], 0):>7s} MiB  img/s {fmt(r['img_s']):>6s} {r['note']}",
            flush=True,
        )

    if "cores" in parts:
        for core, label, dims in core_cases(quick):
            for impl in ("explicit", "seg"):
                report(call(run_core_case, core, label, dims, impl, device, core_dtype, iters))
    model_backbone = train_shape(quick, backbone, batch, crop)[0]
    skipped = {h: get_head(h).backbone_error(model_backbone) for h in heads}  # smp's DPT needs a ViT
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
    if "infer" in parts:
        ishape = infer_shape(quick, backbone, infer_size)
        for head in heads:
            for r in run_infer_opt_case(head, device, ishape, iters, fuse_bn, channels_last, bf16, compile):
                report(r)
    if "onnx" in parts:
        size = onnx_size or ((128, 256) if quick else CITYSCAPES_CROP)
        for head in heads:
            for r in run_onnx_case(head, backbone or ("resnet18" if quick else "resnet50c"), size, iters):
                report(r)

    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0)
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command
        or (
            "python -m seg.bench --device "
            + device
            + (" --quick" if quick else "")
            + (" --compile" if compile else "")
            + (" --onnx" if "onnx" in parts else "")
            + (" --parts " + " ".join(parts))
        ),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{device}{'_onnx' if 'onnx' in parts else ''}{'_infer' if list(parts) == ['infer'] else ''}{'_quick' if quick else ''}{'_bf16' if bf16 and device == 'cpu' else ''}{'_compile' if compile else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = to_markdown(results, meta)
    (out / f"{stem}.md").write_text(md)
    print("\n" + md)
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return results


def main(argv: list[str] | None = None) -> None:
    p = ArgParser(
        prog="python -m seg.bench",
        description="Speed and memory of seg's attention cores and whole models.",
        pairs=("--crop", "--infer_size"),
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--quick", action="store_true", help="small shapes: a harness check that runs in about a minute on CPU"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["cores", "models", "infer", "onnx"],
        default=None,
        help="default: cores models on CUDA, infer on CPU (with --onnx: onnx only). infer: per head, "
        "whole-image inference of the plain model vs seg.models.optimize_for_inference "
        "(size: --infer_size, default [512,1024]; levers: --no_fuse_bn, --no_channels_last, --bf16)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="ONNX Runtime (CPU) whole-image latency per head beside PyTorch's (size: --infer_size, "
        "default [512,1024]; needs pip install -e '.[export]')",
    )
    p.add_argument(
        "--heads",
        nargs="+",
        choices=HEADS,
        default=list(HEADS),
        metavar="HEAD",
        help="default: every registered head: " + " ".join(HEADS),
    )
    p.add_argument("--iters", type=int, default=None, help="timed iterations per case (median is reported)")
    p.add_argument("--out", default="bench_results", help="folder for the JSON and Markdown results")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the training step under torch.compile; in the infer part, "
        "the optimised model is torch.compile'd (inductor, freezing)",
    )
    p.add_argument(
        "--backbone", default=None, help="timm backbone of the model cases (default resnet50c; quick: resnet18)"
    )
    p.add_argument("--batch", type=int, default=None, help="training batch size (default 8; quick: 2)")
    p.add_argument("--crop", type=hw, metavar="[H,W]", default=None, help="training crop ([512,1024]; quick: [64,128])")
    p.add_argument(
        "--infer_size",
        type=hw,
        metavar="[H,W]",
        default=None,
        help="whole-image inference size (default [1024,2048]; quick: [128,256])",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="seg's path under bf16 autocast on CPU too (always on CUDA): a CPU proxy of GPU memory; "
        "in the infer part, the optimised model runs under bf16 autocast",
    )
    p.add_argument(
        "--no_fuse_bn",
        dest="fuse_bn",
        action="store_false",
        help="infer part: do not fold BatchNorm into the convolutions",
    )
    p.add_argument(
        "--no_channels_last",
        dest="channels_last",
        action="store_false",
        help="infer part: keep NCHW (no channels_last / oneDNN NHWC convolutions)",
    )
    a = p.parse_args(argv)
    command = "python -m seg.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = a.parts or (["onnx"] if a.onnx else ["infer"] if a.device == "cpu" else ["cores", "models"])
    if a.onnx and "onnx" not in parts:
        parts.append("onnx")
    infer_size = None if a.infer_size is None else tuple(a.infer_size)
    run(
        a.device,
        a.quick,
        parts,
        a.heads,
        a.out,
        a.iters,
        a.compile,
        a.backbone,
        a.batch,
        None if a.crop is None else tuple(a.crop),
        infer_size,
        command,
        a.bf16,
        onnx_size=infer_size,
        fuse_bn=a.fuse_bn,
        channels_last=a.channels_last,
    )
