"""DANet head: position (PAM) and channel (CAM) attention branches, summed, plus their own classifiers.

"Dual Attention Network for Scene Segmentation", Fu et al., CVPR 2019,
https://arxiv.org/abs/1809.02983. Layout mirrors mmsegmentation 1.x ``DAHead``
(``configs/_base_/models/danet_r50-d8.py``, pam_channels 64): each branch is
conv -> attention -> conv; the fused output classifies ``pam_feat + cam_feat``; in train mode the
branch classifiers give the deep-supervision outputs ``'pam'`` and ``'cam'`` (mmseg weights all three
losses 1.0; the loss lives in ``seg.training``). All three share one ``Dropout2d``.
"""

from __future__ import annotations

import torch
from torch import nn

from seg.layers import ChannelAttention, PositionAttention

from .conv_bn_act import ConvBnAct, init_classifier
from .decode_head import DecodeHead

__all__ = ["DAHead"]


class DAHead(DecodeHead):
    """DANet decode head: ``{'out'}`` in eval mode, ``{'out', 'pam', 'cam'}`` in train mode.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of both branches (mmseg: 512).
        pam_channels: query/key channels of the position attention (mmseg: 64).
        dropout: ``Dropout2d`` probability before the classifiers.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        pam_channels: int = 64,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)

        def conv(cin: int) -> ConvBnAct:
            return ConvBnAct(cin, channels, 3, norm_layer=norm_layer, act_layer=act_layer)

        self.pam_in_conv = conv(in_channels)
        self.pam = PositionAttention(channels, qk_channels=pam_channels)
        self.pam_out_conv = conv(channels)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.cam_in_conv = conv(in_channels)
        self.cam = ChannelAttention(channels)
        self.cam_out_conv = conv(channels)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        for conv in (self.pam_conv_seg, self.cam_conv_seg, self.conv_seg):  # this order keeps seeded inits as they were
            init_classifier(conv)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))  # (B, C, h, w)
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))  # (B, C, h, w)
        outs = {"out": self.classify(pam_feat + cam_feat)}
        if self.training:  # deep supervision of each branch
            outs["pam"] = self.pam_conv_seg(self.dropout(pam_feat))
            outs["cam"] = self.cam_conv_seg(self.dropout(cam_feat))
        return outs
