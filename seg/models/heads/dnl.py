"""DNLNet head: a disentangled non-local block (whitened pairwise term + unary term) in the FCN frame.

"Disentangled Non-Local Neural Networks", Yin et al., ECCV 2020, https://arxiv.org/abs/2006.06668.
Layout mirrors mmsegmentation 1.x ``DNLHead`` / ``DisentangledNonLocal2d``
(``configs/_base_/models/dnl_r50-d8.py``: reduction 2, scaled embedded Gaussian, temperature 0.05):
the pairwise term is a softmax over *whitened* (mean-subtracted over positions) queries and keys,
scaled by ``1 / (sqrt(Ci) * temperature)``; the unary term is one softmax-pooled value vector per image
(``conv_mask``), added to every position. Built on ``seg.layers.NonLocal2d`` (same ``g``/``theta``/``phi``/
``conv_out``/``norm``), so the pairwise term runs on the memory-safe ``position_attention``.
"""

from __future__ import annotations

import torch
from torch import nn

from seg.layers import NonLocal2d
from seg.layers.functional import position_attention

from .fcn import FCNHead

__all__ = ["DNLHead", "DisentangledNonLocal2d"]


class DisentangledNonLocal2d(NonLocal2d):
    """``out = x + norm(conv_out(pairwise(whiten(theta), whiten(phi)) g + unary))``.

    Args:
        channels: input (= output) channels.
        reduction: inner channels are ``channels // reduction``.
        use_scale: divide the pairwise energies by sqrt(inner channels).
        temperature: further divides the pairwise energies (mmseg: 0.05, sharpening the softmax).
        norm_layer: norm after ``conv_out`` (zero-initialised, so the block starts as the identity).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__(
            channels, reduction=reduction, use_scale=use_scale, mode="embedded_gaussian", norm_layer=norm_layer
        )
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.g(x)  # (B, Ci, H, W)
        theta = self.theta(x)
        phi = self.phi(x)
        theta = theta - theta.mean(dim=(2, 3), keepdim=True)  # whitening: subtract the mean over positions
        phi = phi - phi.mean(dim=(2, 3), keepdim=True)
        scale = (self.inter_channels**-0.5 if self.use_scale else 1.0) / self.temperature
        pairwise = position_attention(theta, phi, g, scale=scale)  # (B, Ci, H, W)
        mask = torch.softmax(self.conv_mask(x).reshape(b, 1, h * w).float(), dim=-1).to(g.dtype)  # (B, 1, HW)
        unary = torch.bmm(g.reshape(b, self.inter_channels, h * w), mask.transpose(1, 2))  # (B, Ci, 1)
        y = pairwise + unary.reshape(b, self.inter_channels, 1, 1)
        return x + self.norm(self.conv_out(y))


class DNLHead(FCNHead):
    """DNLNet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head (mmseg: 512).
        reduction: inner channels of the block are ``channels // reduction`` (mmseg: 2).
        use_scale: scale the pairwise energies by 1/sqrt(inner channels) (mmseg: True).
        temperature: softmax temperature of the pairwise term (mmseg: 0.05).
        concat_input: fuse ``[input, features]`` with ``conv_cat`` before the classifier.
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class (also after the block's output conv).
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            channels=channels,
            num_convs=2,
            concat_input=concat_input,
            dropout=dropout,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.plug_context(
            "dnl_block",
            DisentangledNonLocal2d(
                channels, reduction=reduction, use_scale=use_scale, temperature=temperature, norm_layer=norm_layer
            ),
        )
