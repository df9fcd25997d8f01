"""Peak memory of one benchmark call: CUDA's allocator peak, or on CPU malloc's bytes in use sampled after every
aten op (glibc ``mallinfo2``), with the resident-set peak (VmHWM) in a fresh process as the fallback."""

from __future__ import annotations

import multiprocessing as mp
from typing import Callable

import torch

from .timing import sync

__all__ = ["cpu_alloc_peak_mb", "in_subprocess", "malloc_in_use", "peak_mb"]


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


def malloc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (``mallinfo2``: heap chunks + mmapped chunks), or None where it is missing."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        fields = (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )

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


def cpu_alloc_peak_mb(fn: Callable[[], object]) -> float | None:
    """Peak of the bytes malloc holds for the process, sampled after every aten op of one call of `fn`
    (forward and backward), above the bytes held before the call: what is allocated, like CUDA's
    ``max_memory_allocated``, unlike the resident set, which keeps pages malloc has freed. Temporaries
    that live inside one op are not seen. None where glibc's ``mallinfo2`` is missing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    in_use = malloc_in_use()
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


def peak_mb(fn: Callable[[], object], device: torch.device, per_op: bool = True) -> float:
    """Peak extra memory (MiB) of one call of `fn` (see module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if per_op:
        peak = cpu_alloc_peak_mb(fn)
        if peak is not None:
            return peak
    _reset_peak_rss()
    base = _status_mb("VmRSS")
    fn()
    return max(0.0, _status_mb("VmHWM") - base)


def in_subprocess(target, *args):
    """Run target(*args) in a fresh process (CPU peak memory must not see earlier cases)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(target, args)
