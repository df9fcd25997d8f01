"""Non-local head: one embedded-Gaussian non-local block inside the FCN frame.

"Non-local Neural Networks", Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971.
Layout mirrors mmsegmentation 1.x ``NLHead`` (``configs/_base_/models/nonlocal_r50-d8.py``):
conv -> ``NonLocal2d`` (reduction 2, scaled embedded Gaussian, BN after the output conv,
zero-initialised) -> conv -> ``conv_cat([input, features])`` -> dropout -> 1x1 classifier.
(The file is not called ``nonlocal.py`` because ``nonlocal`` is a Python keyword.)
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from seg.layers import NonLocal2d

from .fcn import FCNHead

__all__ = ["NLHead"]


class NLHead(FCNHead):
    """Non-local decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes.
        channels: width of the head (mmseg: 512).
        reduction: non-local inner channels are ``channels // reduction`` (mmseg: 2).
        use_scale: divide the embedded-Gaussian energies by sqrt(inner channels) (mmseg: True).
        mode: ``'embedded_gaussian'`` (mmseg default) or ``'dot_product'``.
        concat_input: fuse ``[input, features]`` with ``conv_cat`` before the classifier.
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class (also after the non-local output conv).
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        reduction: int = 2,
        use_scale: bool = True,
        mode: Literal["embedded_gaussian", "dot_product"] = "embedded_gaussian",
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
            "nl_block", NonLocal2d(channels, reduction=reduction, use_scale=use_scale, mode=mode, norm_layer=norm_layer)
        )
