"""Non-local block (2D).

Paper: "Non-local Neural Networks", Xiaolong Wang, Ross Girshick, Abhinav Gupta, Kaiming He,
CVPR 2018, https://arxiv.org/abs/1711.07971

Behaves like mmcv's ``NonLocal2d`` (as used by mmsegmentation's ``NLHead``): the embedded Gaussian
divides the energies by sqrt(inter_channels) when ``use_scale``; ``dot_product`` divides them by the
number of positions N (no softmax). Parameter names map onto mmcv's (``g``/``theta``/``phi``/
``conv_out`` ConvModules; the ``conv_out`` norm is our ``norm``). The initialisation follows mmcv:
normal(std=0.01) for g/theta/phi with zero bias, and the last norm's weight (or ``conv_out`` when there is
no norm) zeroed so the block starts as the identity.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from .functional import position_attention


class NonLocal2d(nn.Module):
    """Non-local block: ``out = x + norm(conv_out(f(theta(x), phi(x)) g(x)))``.

    Args:
        channels: input (= output) channels.
        reduction: ``inter_channels = max(channels // reduction, 1)``.
        use_scale: embedded Gaussian only: divide the energies by sqrt(inter_channels).
        mode: ``'embedded_gaussian'`` (softmax) or ``'dot_product'`` (energies / N, no softmax).
        norm_layer: norm after ``conv_out`` (``None``: no norm, ``conv_out`` gets a bias).
    """

    starts_as_identity: ClassVar[bool] = True  # residual with a zero-initialised last factor

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        mode: Literal["embedded_gaussian", "dot_product"] = "embedded_gaussian",
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(f"NonLocal2d: mode must be 'embedded_gaussian' or 'dot_product', got {mode!r}")
        self.channels = channels
        self.inter_channels = max(channels // reduction, 1)
        self.use_scale = use_scale
        self.mode = mode
        inter = self.inter_channels
        self.g = nn.Conv2d(channels, inter, kernel_size=1)
        self.theta = nn.Conv2d(channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(channels, inter, kernel_size=1)
        self.conv_out = nn.Conv2d(inter, channels, kernel_size=1, bias=norm_layer is None)
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if isinstance(self.norm, nn.Identity):
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)
        else:
            nn.init.kaiming_normal_(self.conv_out.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.g(x)  # (B, Ci, H, W)
        theta = self.theta(x)  # (B, Ci, H, W)
        phi = self.phi(x)  # (B, Ci, H, W)
        if self.mode == "embedded_gaussian":
            scale = self.inter_channels**-0.5 if self.use_scale else 1.0
            y = position_attention(theta, phi, g, scale=scale)  # (B, Ci, H, W)
        else:
            # (theta phi^T / N) g == theta (phi^T g / N): O(N Ci^2) instead of an N x N matrix.
            b, ci, h, w = g.shape
            n = h * w
            context = torch.bmm(phi.flatten(2), g.flatten(2).transpose(1, 2)) / n  # (B, Ci_phi, Ci_g)
            y = torch.bmm(context.transpose(1, 2), theta.flatten(2))  # (B, Ci_g, N)
            y = y.reshape(b, ci, h, w)  # (B, Ci, H, W)
        return x + self.norm(self.conv_out(y))
