"""Whole-image CPU inference, seg against mmsegmentation 1.2.2, same weights, back to back in one process.

NOT part of the seg package and NOT run in CI: it imports mmsegmentation (a dev-time reference). Run it in the
reference venv (system site-packages visible, so the same torch), with seg from this checkout:

    PYTHONPATH=. /work/mmenv/bin/python scripts/cpu_inference_vs_mmseg.py --heads fcn danet --size 512 1024 --reps 3
    PYTHONPATH=. /work/mmenv/bin/python scripts/cpu_inference_vs_mmseg.py --heads danet nonlocal --size 1024 2048 \\
        --reps 1 --memory

For each head it builds mmseg's R50-D8 ``EncoderDecoder`` (the configs of ``scripts/make_mmseg_golden.py``),
randomises every weight and BN statistic, saves the state dict and loads it into seg with
``seg.models.load_mmseg_checkpoint``: both run the same weights, and the largest logit difference is printed.
Then, ``--reps`` times, each implementation runs one forward of the same random image in turn (mmseg's
``encode_decode``: network + bilinear resize to the input; seg's ``model(x)['out']``, the same), all under
``torch.inference_mode()``; min and median seconds are reported, and seg's speed-up = mmseg median / seg median.
Alternating the implementations within each repetition spreads the noise of a shared machine over all of them.
Each call's process CPU time (all threads) is reported beside its wall time: on an oversubscribed machine wall
time mostly measures the other tenants; with ``--threads 1`` CPU time is the work itself (no thread waits).

seg variants (``--variants``): ``plain`` (the model as ``seg.predict`` ran it before: channels_last, the
``SegmentationModule`` default, BN unfused, logits resized by matrix products),
``opt`` (``seg.models.optimize_for_inference``: BN folded into convs, channels_last / oneDNN), ``opt-bf16``
(the same under bf16 autocast; its logit difference to mmseg's fp32 is printed too), ``opt-compile`` /
``opt-bf16-compile`` (also ``torch.compile`` with freezing; the first call, which compiles, is the warm-up and its
time is printed). ``opt-backbone`` runs only the `opt` model's dilated ResNet (no head, no resize): the
convolution work every implementation of these models shares, so mmseg's time over it bounds the speed-up any
head or resize change can give in that precision.

``--bound``: what fp32 can give. The seg model's forward FLOPs (``seg.bench.flops.forward_flops``: convolutions
and attention products) over each implementation's median time give the rate it achieves; 1.5x mmseg's speed
needs 1.5 x FLOPs / mmseg's time; both are printed beside the best rate one convolution reaches on this CPU (a
512->512 3x3 convolution on 64x128 features, channels_last, oneDNN, min of 10: the shape of the heads' convs).
A whole network runs below that rate (1x1 convs, the stem, memory-bound passes), so a requirement near or
above it cannot be met with the same arithmetic.

``--memory``: peak memory of the first forward per implementation, as ``seg.bench`` measures it on CPU (malloc
bytes in use, sampled after every aten op, above what was held before the call); ``--reps 0`` skips the timing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, "/work/shared/tools")


def build_mmseg(head: str, num_classes: int):
    import make_mmseg_golden as g

    if "mmcv.ops.cc_attention" not in sys.modules:  # once per process: mmengine refuses a second registration
        g.install_mmcv_ops_stub()
        from mmseg.utils import register_all_modules

        register_all_modules()
    cfg = g.mmseg_cfg(head, num_classes, tiny=False) if head in g.HEADS else g.zoo_cfg(head, num_classes, tiny=False)
    model = g.build(cfg)
    g.randomise(model, torch.Generator().manual_seed(0))
    return model.eval()


def load_seg(head: str, state: dict, num_classes: int) -> torch.nn.Module:
    """seg's model of `head` with mmseg's weights `state`."""
    from seg.models import load_mmseg_checkpoint
    from seg.models.heads import HEADS

    stride = getattr(HEADS[head], "recipe_output_stride", 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{head}.pth"
        torch.save({"state_dict": state}, path)
        return load_mmseg_checkpoint(path, head, "resnet50c", num_classes, output_stride=stride).eval()


def build_seg(head: str, state: dict, num_classes: int, variant: str):
    from seg.models.optimize import optimize_for_inference

    model = load_seg(head, state, num_classes)
    if variant == "opt-backbone":  # the shared convolution work alone: the bound on what a faster head can give
        opt = optimize_for_inference(model, "cpu")
        return lambda x: {"out": opt.model.backbone(x.contiguous(memory_format=torch.channels_last))[-1]}
    if variant == "plain":  # as seg.predict ran it: channels_last (the module default), BN unfused, matmul resize
        model.to(memory_format=torch.channels_last)
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))
    return optimize_for_inference(model, "cpu", bf16="bf16" in variant, compile="compile" in variant)


def conv_peak(reps: int = 10) -> float:
    """Best fp32 FLOP/s of a 512->512 3x3 convolution on 1x512x64x128 (channels_last, oneDNN), min of `reps`."""
    conv = torch.nn.Conv2d(512, 512, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 512, 64, 128).contiguous(memory_format=torch.channels_last)
    flops = 2 * 512 * 512 * 9 * 64 * 128
    with torch.inference_mode():
        conv(x)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t0)
    return flops / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", nargs="+", default=["fcn", "ccnet", "danet", "nonlocal"])
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "opt"],
        choices=["plain", "opt", "opt-bf16", "opt-compile", "opt-bf16-compile", "opt-backbone"],
    )
    p.add_argument("--memory", action="store_true", help="also the peak memory of one forward per implementation")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--bound", action="store_true", help="also the fp32 floor: forward FLOPs / best conv GFLOP/s")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from seg.bench import cpu_alloc_peak_mb

    nc = 19
    h, w = a.size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{h}x{w}, {time.strftime('%F %T')}")
    peak = conv_peak() if a.bound else None
    if peak:
        print(f"best fp32 rate: 512->512 3x3 conv on 1x512x64x128, channels_last: {peak / 1e9:.0f} GFLOP/s")
    for head in a.heads:
        mm = build_mmseg(head, nc)
        state = {k: v.clone() for k, v in mm.state_dict().items()}
        impls = {"mmseg": (lambda m: lambda: m.encode_decode(x, metas))(mm)}
        segs = {v: build_seg(head, state, nc, v) for v in a.variants}
        for v, model in segs.items():
            impls[f"seg-{v}"] = (lambda m: lambda: m(x)["out"])(model)
        firsts: dict[str, torch.Tensor] = {}
        peaks: dict[str, float] = {}
        for name, fn in impls.items():  # first call: warm-up (compiles if compiled), logits, peak memory (--memory)
            gc.collect()
            t0 = time.perf_counter()
            with torch.inference_mode():
                if a.memory:
                    box: list = []
                    peaks[name] = cpu_alloc_peak_mb(lambda: box.append(fn()))
                    out = box.pop()
                else:
                    out = fn()
            firsts[name] = out.float()
            del out
            print(f"{head:9s} {name:14s} first call {time.perf_counter() - t0:.1f} s", flush=True)
        ref = firsts.pop("mmseg")
        for name, out in firsts.items():
            if out.shape != ref.shape:  # opt-backbone: features, not logits
                continue
            diff = (out - ref).abs().max().item() / ref.abs().max().item()
            agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
            print(
                f"{head:9s} {name:14s} max |logit diff| / max |logit| {diff:.2e}, argmax agrees on "
                f"{100 * agree:.3f} % of pixels",
                flush=True,
            )
        del ref, firsts
        for name, mb in peaks.items():
            print(f"{head:9s} {name:14s} peak {mb:8.0f} MiB  x mmseg {mb / peaks['mmseg']:.3f}", flush=True)
        if a.reps:
            times: dict[str, list[float]] = {name: [] for name in impls}
            cpu: dict[str, list[float]] = {name: [] for name in impls}
            with torch.inference_mode():
                for _ in range(a.reps):
                    for name, fn in impls.items():
                        c0, t0 = time.process_time(), time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
            if peak:
                from seg.bench.flops import forward_flops

                flops = forward_flops(load_seg(head, state, nc), (1, 3, h, w))
                floor, mm_med = flops / peak, statistics.median(times["mmseg"])
                rates = " ".join(f"{name} {flops / statistics.median(ts) / 1e9:.0f}" for name, ts in times.items())
                print(
                    f"{head:9s} fp32 bound: {flops / 1e9:.0f} GFLOP; GFLOP/s achieved: {rates}; 1.5x mmseg needs "
                    f"{1.5 * flops / mm_med / 1e9:.0f} GFLOP/s, the best single conv ran at {peak / 1e9:.0f} "
                    f"(floor {floor:.2f} s: mmseg median / floor = {mm_med / floor:.2f}x)",
                    flush=True,
                )
            for label, table in (("wall", times), ("cpu", cpu)):
                base = statistics.median(table["mmseg"])
                for name, ts in table.items():
                    med = statistics.median(ts)
                    print(
                        f"{head:9s} {name:14s} {label:4s} min {min(ts):7.3f} s  median {med:7.3f} s  speed x mmseg "
                        f"{base / med:5.2f} (min: {min(table['mmseg']) / min(ts):5.2f})  "
                        f"({' '.join(f'{t:.2f}' for t in ts)})",
                        flush=True,
                    )
        del mm, segs, impls
        gc.collect()


if __name__ == "__main__":
    main()
