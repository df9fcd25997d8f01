"""Whole-model cases: the training step (throughput, peak memory, useful FLOPs) and whole-image inference, seg's
fast path against the explicit fp32 formulation mmseg runs."""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from seg.data.transforms import CITYSCAPES_CROP
from seg.models import get_head

from .flops import explicit, gpu_peak_flops
from .memory import peak_mb
from .result import Result
from .timing import time_call

__all__ = ["build", "mmseg_loss", "run_infer_case", "run_train_case", "stride", "train_shape"]


def stride(head: str) -> int:
    """The backbone's output stride in the head's recipe: 8 (dilated, "-D8"), UPerNet's undilated 32, an smp
    architecture's own default."""
    return get_head(head).recipe_output_stride


def build(head: str, backbone: str, num_classes: int, device: torch.device, fast: bool, **kw):
    """fast: seg's path (channels_last, matmul logit resize); else mmseg's (NCHW, F.interpolate)."""
    from seg.models import build_model

    model = build_model(
        backbone=backbone,
        head=head,
        num_classes=num_classes,
        output_stride=stride(head),
        aux=get_head(head).aux,  # smp architectures have no aux head
        weights=None,
        **kw,
    )
    model = model.to(device)
    model.fast_resize = fast
    if fast:
        model = model.to(memory_format=torch.channels_last)
    return model


def mmseg_loss(outputs: dict, mask: torch.Tensor) -> torch.Tensor:
    """mmseg's loss: cross-entropy on each output at input resolution (aux weighted 0.4)."""
    loss = 0.0
    for name, logits in outputs.items():
        weight = 0.4 if name == "aux" else 1.0
        loss = loss + weight * F.cross_entropy(logits.float(), mask, ignore_index=255)
    return loss


def train_shape(
    quick: bool, backbone: str | None = None, batch: int | None = None, crop: tuple[int, int] | None = None
) -> tuple[str, int, int, int]:
    """(backbone, batch, height, width) of the training cases: R50-D8 B=8 512x1024 (quick: resnet18 B=2 64x128)."""
    b0, n0, (h0, w0) = ("resnet18", 2, (64, 128)) if quick else ("resnet50c", 8, CITYSCAPES_CROP)
    h, w = crop or (h0, w0)
    return backbone or b0, batch or n0, h, w


def run_train_case(
    head: str,
    impl: str,
    device: str,
    quick: bool,
    iters: int,
    shape: tuple[str, int, int, int] | None = None,
    bf16: bool = False,
) -> dict:
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
    eager = build(head, backbone, nc, dev, fast=fast).train()
    model = torch.compile(eager) if impl == "seg+compile" else eager
    opt = torch.optim.SGD(eager.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    seg_loss = SegLoss()
    x = torch.randn(b, 3, hh, ww, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, nc, (b, hh, ww), device=dev)
    res = Result("train", head, f"{backbone}-D{stride(head)} B={b} {hh}x{ww}", impl, "bf16" if use_bf16 else "fp32")

    def step():
        with explicit(not fast), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = seg_loss(model(x, resize=False), y)[0] if fast else mmseg_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        res.peak_mb = peak_mb(step, dev, per_op=impl != "seg+compile")
        sec = time_call(step, dev, 2 if quick else 5, iters)
        res.fwd_bwd_ms = 1e3 * sec
        res.img_s = b / sec
        from torch.utils.flop_counter import FlopCounterMode

        # Useful FLOPs: counted on the eager model with the explicit formulation (attention and resize), so that work a fused
        # kernel repeats (e.g. q.k once per v head in split-head SDPA) does not inflate the utilisation.
        eager.fast_resize = False  # F.interpolate: no FLOPs counted for resizing, as in mmseg
        with FlopCounterMode(display=False) as counter:
            with explicit(True), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = mmseg_loss(eager(x), y)
            loss.backward()
        eager.fast_resize = fast
        opt.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
        res.tflops = flops / sec / 1e12
        res.extra["tflop_per_img"] = flops / b / 1e12
        peak = gpu_peak_flops(dev)
        if peak and use_bf16:
            res.mfu = flops / sec / peak
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)


def run_infer_case(
    head: str,
    impl: str,
    device: str,
    quick: bool,
    iters: int,
    shape: tuple[str, int, int] | None = None,
    bf16: bool = False,
) -> dict:
    """Whole-image inference (one 1024x2048 image) time and peak memory."""
    dev = torch.device(device)
    fast = impl == "seg"
    backbone, hh, ww = shape or (("resnet18", 128, 256) if quick else ("resnet50c", 1024, 2048))
    nc = 19
    use_bf16 = fast and (dev.type == "cuda" or bf16)
    torch.backends.cudnn.benchmark = fast
    torch.manual_seed(0)
    model = build(head, backbone, nc, dev, fast=fast).eval()
    x = torch.randn(1, 3, hh, ww, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    res = Result("infer", head, f"{backbone}-D{stride(head)} B=1 {hh}x{ww}", impl, "bf16" if use_bf16 else "fp32")

    def fwd():
        with (
            torch.inference_mode(),
            explicit(not fast),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16),
        ):
            return model(x)["out"]

    try:
        res.peak_mb = peak_mb(fwd, dev)
        res.fwd_ms = 1e3 * time_call(fwd, dev, 1, iters)
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)
