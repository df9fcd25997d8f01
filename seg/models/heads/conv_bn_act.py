"""Conv -> BatchNorm -> activation, the unit every decode head is built from.

Its child names (``conv``, ``bn``) match mmcv's ``ConvModule``, so mmsegmentation head weights
load without renaming. Under DDP Lightning converts the BatchNorm to SyncBatchNorm.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ConvBnAct"]


class ConvBnAct(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> ``act``; 'same' padding for odd kernels.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        dilation: conv dilation (padding follows it).
        norm_layer: normalisation class called as ``norm_layer(out_channels)``.
        act_layer: activation class, ``None`` for no activation.
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
        padding = (kernel_size // 2) * dilation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = norm_layer(out_channels)
        if act_layer is None:
            self.act = nn.Identity()
        elif act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish):
            self.act = act_layer(inplace=True)
        else:
            self.act = act_layer()
