"""GCNet head: a global-context block (attention pooling + channel-add transform) inside the FCN frame.

"GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", Cao et al., ICCVW 2019,
https://arxiv.org/abs/1904.11492. Layout mirrors mmsegmentation 1.x ``GCHead`` with mmcv's
``ContextBlock`` (``configs/_base_/models/gcnet_r50-d8.py``: ratio 1/4, ``att`` pooling,
``channel_add`` fusion): conv -> ``gc_block`` -> conv -> ``conv_cat([input, features])`` -> dropout ->
``conv_seg``. The block's names (``conv_mask``, ``channel_add_conv.{0,1,3}``) are mmcv's.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .fcn import FCNHead

__all__ = ["ContextBlock", "GCHead"]


class ContextBlock(nn.Module):
    """Global context block: ``x * sigmoid(mul(ctx)) + add(ctx)`` with one context vector per image.

    ``ctx`` is a softmax-weighted sum over all positions (``att``: weights from a 1x1 ``conv_mask``) or
    the plain average (``avg``); each transform is 1x1 conv -> LayerNorm -> ReLU -> 1x1 conv. The last
    conv of each transform starts at zero (mmcv's ``last_zero_init``), so the block starts as the identity.

    Args:
        channels: input (= output) channels.
        ratio: bottleneck width of the transforms is ``int(channels * ratio)``.
        pooling: ``'att'`` (attention pooling) or ``'avg'``.
        fusions: any of ``'channel_add'``, ``'channel_mul'``.
    """

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 4,
        pooling: Literal["att", "avg"] = "att",
        fusions: Sequence[Literal["channel_add", "channel_mul"]] = ("channel_add",),
    ) -> None:
        super().__init__()
        if pooling not in ("att", "avg"):
            raise ValueError(f"ContextBlock: pooling must be 'att' or 'avg', got {pooling!r}")
        if not fusions or any(f not in ("channel_add", "channel_mul") for f in fusions):
            raise ValueError(
                f"ContextBlock: fusions must be a non-empty subset of ('channel_add', 'channel_mul'), got {fusions!r}"
            )
        self.channels = channels
        self.planes = int(channels * ratio)
        self.pooling = pooling
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1) if pooling == "att" else None
        self.channel_add_conv = self._transform() if "channel_add" in fusions else None
        self.channel_mul_conv = self._transform() if "channel_mul" in fusions else None
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)

    def _transform(self) -> nn.Sequential:
        last = nn.Conv2d(self.planes, self.channels, kernel_size=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(
            nn.Conv2d(self.channels, self.planes, kernel_size=1),
            nn.LayerNorm([self.planes, 1, 1]),
            nn.ReLU(inplace=True),
            last,
        )

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1)."""
        if self.conv_mask is None:
            return x.mean(dim=(2, 3), keepdim=True)
        b, c, h, w = x.shape
        weights = torch.softmax(self.conv_mask(x).reshape(b, 1, h * w).float(), dim=-1).to(x.dtype)  # (B, 1, HW)
        ctx = torch.bmm(x.reshape(b, c, h * w), weights.transpose(1, 2))  # (B, C, HW) @ (B, HW, 1) -> (B, C, 1)
        return ctx.reshape(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(ctx))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(ctx)  # (B, C, 1, 1) broadcast over positions
        return out


class GCHead(FCNHead):
    """GCNet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head (mmseg: 512).
        ratio: bottleneck ratio of the context transform (mmseg: 1/4).
        pooling: ``'att'`` (mmseg's recipe) or ``'avg'``.
        fusions: ``('channel_add',)`` in mmseg's recipe; ``'channel_mul'`` also available.
        concat_input: fuse ``[input, features]`` with ``conv_cat`` before the classifier.
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        ratio: float = 1 / 4,
        pooling: Literal["att", "avg"] = "att",
        fusions: Sequence[Literal["channel_add", "channel_mul"]] = ("channel_add",),
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
        self.plug_context("gc_block", ContextBlock(channels, ratio=ratio, pooling=pooling, fusions=tuple(fusions)))
