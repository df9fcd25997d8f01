"""Per-head whole-image inference cases: the model as ``seg.predict`` ran it before ``optimize_for_inference``
(``plain``: fp32, channels_last as ``SegmentationModule`` sets it, BN unfused, matmul logit resize) against ``seg.models.optimize_for_inference`` with the
chosen levers (``opt``), time, peak memory, and how far the optimised logits are from the plain ones."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from seg.data.transforms import CITYSCAPES_CROP
from seg.models.optimize import optimize_for_inference

from .memory import peak_mb
from .models import build, stride
from .result import Result
from .timing import time_call

__all__ = ["INFER_IMPLS", "infer_shape", "run_infer_opt_case"]

INFER_IMPLS = ("plain", "opt")


def infer_shape(quick: bool, backbone: str | None = None, size: tuple[int, int] | None = None) -> tuple[str, int, int]:
    """(backbone, height, width): R50-D8 on one 512x1024 image (quick: resnet18, 128x256)."""
    b0, (h0, w0) = ("resnet18", (128, 256)) if quick else ("resnet50c", CITYSCAPES_CROP)
    h, w = size or (h0, w0)
    return backbone or b0, h, w


def run_infer_opt_case(
    head: str,
    device: str,
    shape: tuple[str, int, int],
    iters: int,
    fuse_bn: bool = True,
    channels_last: bool = True,
    bf16: bool = False,
    compile: bool = False,
    **build_kwargs,
) -> list[dict]:
    """Rows ``plain`` and ``opt`` for one head: ms per image (median of ``iters``, the two alternating), peak MiB, and on ``opt`` the
    largest logit difference to ``plain`` (relative to the largest plain logit) and the share of pixels whose
    argmax agrees, in ``extra``. Both models share the weights (random init, BN statistics randomised so that
    folding has work to do). ``compile``: the optimised model is also ``torch.compile``d (freezing); its first call
    (compilation) is recorded as ``extra['first_call_s']`` and its peak is the resident-set growth (the per-op
    sampler cannot see inside a compiled graph)."""
    dev = torch.device(device)
    backbone, hh, ww = shape
    torch.manual_seed(0)
    plain = build(head, backbone, 19, dev, fast=True, **build_kwargs)  # channels_last, matmul resize
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    plain.eval()
    opt = optimize_for_inference(plain, dev, fuse_bn=fuse_bn, channels_last=channels_last, bf16=bf16, compile=compile)
    x = torch.randn(1, 3, hh, ww, device=dev, generator=torch.Generator(device=dev).manual_seed(1))
    label = f"{backbone}-D{stride(head)} B=1 {hh}x{ww}"
    levers = "+".join(
        n
        for n, on in (("fuse_bn", fuse_bn), ("channels_last", channels_last), ("bf16", bf16), ("compile", compile))
        if on
    )
    rows = []
    outs = {}
    first_call_s = 0.0
    x_cl = x.contiguous(memory_format=torch.channels_last)  # as SegmentationModule feeds it
    fwds = {}
    for impl, model, inp in (("plain", plain, x_cl), ("opt", opt, x)):

        def fwd(model=model, inp=inp):
            with torch.inference_mode():
                return model(inp)["out"]

        res = Result(
            "infer_cpu" if dev.type == "cpu" else "infer_opt",
            head,
            label,
            impl,
            "bf16" if impl == "opt" and bf16 else "fp32",
            note=levers if impl == "opt" else "",
        )
        t0 = time.perf_counter()
        outs[impl] = fwd().float()  # also the warm-up (and the compilation, if compiled)
        first_call_s = time.perf_counter() - t0
        res.peak_mb = peak_mb(fwd, dev, per_op=not (compile and impl == "opt"))
        rows.append(res)
        fwds[impl] = fwd
    # plain and opt alternate, so that a shared machine's drift hits both medians alike
    times: dict[str, list[float]] = {impl: [] for impl in fwds}
    for _ in range(iters):
        for impl, fwd in fwds.items():
            times[impl].append(time_call(fwd, dev, 0, 1))
    for res in rows:
        res.fwd_ms = 1e3 * sorted(times[res.impl])[len(times[res.impl]) // 2]
    ref, out = outs["plain"], outs["opt"]
    rows[1].extra = {
        "max_rel_diff": float((out - ref).abs().max() / ref.abs().max()),
        "argmax_agree": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "fused_conv_bn": int(getattr(opt, "fused_conv_bn", 0)),
        "first_call_s": first_call_s,
    }
    return [asdict(r) for r in rows]
