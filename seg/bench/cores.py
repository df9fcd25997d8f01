"""Attention-core cases: each functional core, seg's implementation against the explicit-energy reference
(``seg.layers.functional_reference``), forward and forward+backward time and peak memory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from seg.layers import functional as AF

from .memory import peak_mb
from .result import Result
from .timing import time_call

__all__ = ["core_cases", "core_fn", "run_core_case"]


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


def core_fn(core: str, impl: str) -> Callable:
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
    fn = core_fn(core, impl)
    res = Result("core", core, label, impl, dtype)

    def fwd():
        with torch.no_grad():
            return fn(q, k, v, dims)

    def fwd_bwd():
        out = fn(q, k, v, dims)
        out.float().sum().backward()
        q.grad = k.grad = v.grad = None

    if impl != "explicit":  # the row is only worth its numbers if it computes what the reference computes
        with torch.no_grad():
            ref = core_fn(core, "explicit")(q, k, v, dims).float()
            res.extra["max_rel_diff"] = float((fwd().float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    try:
        res.peak_mb = peak_mb(fwd_bwd, dev)
        res.fwd_ms = 1e3 * time_call(fwd, dev, 1, iters)
        res.fwd_bwd_ms = 1e3 * time_call(fwd_bwd, dev, 1, iters)
    except torch.OutOfMemoryError:
        res.note = "out of memory"
    return asdict(res)
