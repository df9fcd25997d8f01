"""FLOP counting (``torch.utils.flop_counter``, on the explicit formulation so that fused kernels' repeated work
does not count as useful) and the dense bf16 peaks of known GPUs, for model FLOPs utilisation."""

from __future__ import annotations

import contextlib

import torch

from seg.layers import functional as AF

__all__ = ["GPU_BF16_PEAK", "explicit", "forward_flops", "gpu_peak_flops"]

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


@contextlib.contextmanager
def explicit(enabled: bool):
    if enabled:
        with AF.explicit_attention():
            yield
    else:
        yield


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
        with torch.no_grad(), FlopCounterMode(display=False) as counter, explicit(True):
            model(x)
    finally:
        model.train(was_training)
        if fast is not None:
            model.fast_resize = fast
    return counter.get_total_flops()


def gpu_peak_flops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, value in GPU_BF16_PEAK.items():
        if key in name:
            return value
    return None
