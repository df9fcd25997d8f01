"""Adaptive average pooling that also exports with symbolic input sizes.

``nn.AdaptiveAvgPool2d`` to ``s x s`` averages, for output cell ``i``, the input rows
``floor(i * n / s) .. ceil((i + 1) * n / s) - 1``. ONNX has no such operator: the exporters lower it to a fixed
``AveragePool`` whose kernel and stride come from the traced size, so a dynamic graph (``seg.export --dynamic``)
gives wrong numbers at every other size. Under ``seg.layers.functional.export_mode()`` this module computes the
same average as two matrix products, ``P_h @ x @ P_w^T``, with the (s, n) pooling matrices built from the
symbolic input size (the same trick as the logit resize in ``seg.models.resize``). Outside export it is the
PyTorch module itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import exporting

__all__ = ["AdaptiveAvgPool2d", "adaptive_pool_matrix"]


def adaptive_pool_matrix(n, s: int, like: Tensor) -> Tensor:
    """(s, n) matrix whose row i averages the inputs ``floor(i n / s) .. ceil((i + 1) n / s) - 1``
    (``n`` may be a symbolic size)."""
    i = torch.arange(s, device=like.device)  # (s,)
    j = torch.arange(n, device=like.device)  # (n,)
    start = (i * n) // s
    end = ((i + 1) * n + s - 1) // s
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])  # (s, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` with an int output size; matrix products under ``export_mode()``."""

    def forward(self, x: Tensor) -> Tensor:
        if not exporting():
            return super().forward(x)
        sh, sw = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        if (sh, sw) == (1, 1):
            return x.mean(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
        p_h = adaptive_pool_matrix(x.shape[-2], sh, x)  # (sh, h)
        p_w = adaptive_pool_matrix(x.shape[-1], sw, x)  # (sw, w)
        return torch.matmul(torch.matmul(p_h, x), p_w.t())  # (B, C, h, w) -> (B, C, sh, w) -> (B, C, sh, sw)
