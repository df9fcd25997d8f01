"""Conv -> BatchNorm -> activation, the unit every decode head is built from (plus the classifier).

Its child names (``conv``, ``bn``) match mmcv's ``ConvModule``, so mmsegmentation head weights
load without renaming. Under DDP Lightning converts the BatchNorm to SyncBatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_classifier(conv: nn.Conv2d) -> nn.Conv2d:
    """mmseg's init of a 1x1 classifier (normal std 0.01, zero bias), in place."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def classifier(channels: int, num_classes: int) -> nn.Conv2d:
    """The 1x1 ``conv_seg`` of every head, initialised as mmseg does."""
    return init_classifier(nn.Conv2d(channels, num_classes, kernel_size=1))


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``ref``'s spatial size, ``align_corners=False`` (mmseg's ``resize`` in heads)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


__all__ = ["ConvBnAct", "DepthwiseSeparableConvBnAct", "classifier", "init_classifier", "upsample_like"]


class ConvBnAct(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> ``act``; 'same' padding for odd kernels.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        dilation: conv dilation (padding follows it).
        groups: conv groups (``in_channels`` for a depthwise conv).
        norm_layer: normalisation class called as ``norm_layer(out_channels)``; ``None``: no ``bn`` child
            and the conv gets a bias (mmcv ``ConvModule(norm_cfg=None)``, e.g. EMANet's ``ema_mid_conv``).
        act_layer: activation class, ``None`` for no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        act_layer: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        padding = (kernel_size // 2) * dilation
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=norm_layer is None,
        )
        if norm_layer is not None:
            self.bn = norm_layer(out_channels)
        if act_layer is None:
            self.act = nn.Identity()
        elif act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish):
            self.act = act_layer(inplace=True)
        else:
            self.act = act_layer()


class DepthwiseSeparableConvBnAct(nn.Sequential):
    """``depthwise_conv`` (3x3 per channel, BN, act) -> ``pointwise_conv`` (1x1, BN, act).

    The child names match mmcv's ``DepthwiseSeparableConvModule`` (DeepLabV3+'s ASPP branches and decoder).

    Args:
        in_channels: input channels (= depthwise groups).
        out_channels: output channels of the pointwise conv.
        kernel_size: depthwise kernel size.
        dilation: depthwise dilation (padding follows it).
        norm_layer: normalisation class after both convs.
        act_layer: activation class after both convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvBnAct(
            in_channels,
            in_channels,
            kernel_size,
            dilation=dilation,
            groups=in_channels,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.pointwise_conv = ConvBnAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
