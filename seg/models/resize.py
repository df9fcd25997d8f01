"""Bilinear resizing of logits as two small matrix products.

``F.interpolate(x, size, mode='bilinear', align_corners=False)`` is a separable linear map:
``out = A_h @ x @ A_w^T`` with interpolation matrices ``A_h`` (H_out, H_in) and ``A_w`` (W_out, W_in)
holding at most two non-zeros per row. Upsampling logits to the label size is cheap forward, but its
CUDA backward scatters gradients with atomics: on an H100 it took 3.6 ms per output for an R50-D8
training step (B=8, 19 classes, 64x128 -> 512x1024), 14 ms of DANet's 114 ms step with its four outputs
(``scripts/profile_train_step.py``). As matrix products the backward is two more matrix products.

Under ``seg.layers.functional.export_mode()`` ``resize_bilinear`` is ``F.interpolate`` (in fp32): the
matrices are built from Python ints, which would freeze the traced size into an exported graph, while
exporters lower ``F.interpolate`` to one resize op with a symbolic output size.

The products run in fp32 (also under autocast), so the result equals ``F.interpolate`` to fp32 rounding
for any size ratio, and the loss gets fp32 logits without a separate cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seg.layers.functional import exporting

__all__ = ["interpolation_matrix", "resize_bilinear"]

_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def interpolation_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_out, n_in) fp32 matrix of 1-D linear interpolation with ``align_corners=False`` (PyTorch's rule:
    source = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0; the upper neighbour clamped at n_in - 1)."""
    key = (n_in, n_out, str(device))
    if key not in _CACHE:
        # Built as a normal tensor even when first asked for under torch.inference_mode (validation, predict):
        # an inference tensor in the cache could not be saved for backward by the next training step.
        with torch.inference_mode(False):
            # fp32 arithmetic in PyTorch's order, so the weights are bit-identical to F.interpolate's
            scale = torch.tensor(n_in / n_out, dtype=torch.float32)
            dst = torch.arange(n_out, dtype=torch.float32)
            src = (scale * (dst + 0.5) - 0.5).clamp(min=0)
            i0 = src.floor().long().clamp(max=n_in - 1)
            i1 = (i0 + 1).clamp(max=n_in - 1)
            lam = src - i0
            rows = torch.arange(n_out)
            mat = torch.zeros(n_out, n_in, dtype=torch.float32)
            mat.index_put_((rows, i0), 1 - lam, accumulate=True)
            mat.index_put_((rows, i1), lam, accumulate=True)
            _CACHE[key] = mat.to(device=device, dtype=torch.float32)
    return _CACHE[key]


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)`` for (B, C, H, W), in fp32."""
    if exporting():  # symbolic sizes: see the module docstring
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    ho, wo = int(size[0]), int(size[1])
    if (h, w) == (ho, wo):
        return x.float()
    a_h = interpolation_matrix(h, ho, x.device)  # (Ho, H)
    a_w = interpolation_matrix(w, wo, x.device)  # (Wo, W)
    with torch.autocast(x.device.type, enabled=False):
        y = torch.matmul(a_h, x.float())  # (B, C, Ho, W)
        return torch.matmul(y, a_w.t())  # (B, C, Ho, Wo)
