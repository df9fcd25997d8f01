"""PSPNet head: pyramid pooling over the last stage, a 3x3 bottleneck and the classifier.

"Pyramid Scene Parsing Network", Zhao et al., CVPR 2017, https://arxiv.org/abs/1612.01105.
Layout mirrors mmsegmentation 1.x ``PSPHead`` (``configs/_base_/models/pspnet_r50-d8.py``, pool scales
1, 2, 3, 6): ``bottleneck(cat[x, PPM(x)])`` -> dropout -> ``conv_seg``. Module names are mmseg's
(``psp_modules``, ``bottleneck``, ``conv_seg``). UPerNet (``uper.py``) reuses it as its top level.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead
from .ppm import PPM

__all__ = ["PSPHead"]


class PSPHead(DecodeHead):
    """PSPNet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map (stage 4).
        num_classes: number of output classes.
        channels: width of the pyramid branches and the bottleneck (mmseg: 512).
        pool_scales: pyramid pooling sizes (mmseg: 1, 2, 3, 6).
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.psp_modules = PPM(in_channels, channels, pool_scales, norm_layer=norm_layer, act_layer=act_layer)
        self.bottleneck = ConvBnAct(
            in_channels + len(pool_scales) * channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer
        )
        self.add_classifier(dropout)

    def psp(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> pyramid-pooled context features (B, channels, h, w); UPerNet's top level too."""
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))  # (B, C_in + S*C, h, w) -> (B, C, h, w)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classify(self.psp(x))}
