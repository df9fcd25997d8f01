"""Query/key/value self-attention with projection stacks: the block shared by the OCR, ISA and ANN heads.

"Attention Is All You Need", Vaswani et al., NeurIPS 2017, https://arxiv.org/abs/1706.03762, in the
form of mmsegmentation 1.x ``models/utils/self_attention_block.py``: queries come from one feature map,
keys/values from another (or the same), each through its own stack of 1x1 convs (``query_project``,
``key_project``, ``value_project``, optional ``out_project``); the keys and values may be pooled first
(``key_downsample``, ANN's pyramid pooling). The energies are scaled by ``channels ** -0.5``.

The heads using it attend over few keys (OCR: one per class; ANN: 110 pooled positions; ISA: one group),
so the attention itself is ``F.scaled_dot_product_attention`` (fused kernels on GPU, the math path on CPU).
Projection module names match mmseg's (``key_project.0.conv`` for a stack, ``key_project.conv`` for a
single ConvModule, ``value_project`` for a plain conv), so checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv_bn_act import ConvBnAct

__all__ = ["SelfAttentionBlock", "projection"]


def projection(
    in_channels: int,
    channels: int,
    num_convs: int,
    with_norm: bool,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
    act_layer: type[nn.Module] = nn.ReLU,
) -> nn.Module:
    """``num_convs`` 1x1 convs: ConvBnAct when ``with_norm`` else plain biased convs; one conv is not wrapped."""
    convs: list[nn.Module] = []
    for i in range(num_convs):
        cin = in_channels if i == 0 else channels
        convs.append(
            ConvBnAct(cin, channels, 1, norm_layer=norm_layer, act_layer=act_layer)
            if with_norm
            else nn.Conv2d(cin, channels, kernel_size=1)
        )
    return convs[0] if num_convs == 1 else nn.Sequential(*convs)


class SelfAttentionBlock(nn.Module):
    """``out_project(softmax(q k^T / sqrt(channels)) v)`` with q from ``query_feats``, k/v from ``key_feats``.

    Takes two inputs (``forward(query_feats, key_feats)``); the output has the query's spatial size and
    ``out_channels`` channels.

    Args:
        key_in_channels: channels of ``key_feats``.
        query_in_channels: channels of ``query_feats``.
        channels: query/key width (and value width when ``with_out``).
        out_channels: output channels.
        share_key_query: one projection for keys and queries (registered under both names, as in mmseg).
        key_query_num_convs: convs in the key/query projections.
        key_query_norm: ConvBnAct (True) or plain convs (False) for keys/queries.
        value_out_num_convs: convs in the value (and out) projections.
        value_out_norm: ConvBnAct (True) or plain convs (False) for value/out.
        with_out: values are ``channels`` wide and an ``out_project`` maps them to ``out_channels``;
            else values are ``out_channels`` wide and there is no ``out_project``.
        key_downsample: applied to the projected keys and values (e.g. pyramid pooling), or ``None``.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        key_in_channels: int,
        query_in_channels: int,
        channels: int,
        out_channels: int,
        share_key_query: bool = False,
        key_query_num_convs: int = 2,
        key_query_norm: bool = True,
        value_out_num_convs: int = 1,
        value_out_norm: bool = False,
        with_out: bool = True,
        key_downsample: nn.Module | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if share_key_query and key_in_channels != query_in_channels:
            raise ValueError(
                "share_key_query needs key_in_channels == query_in_channels, got "
                f"{key_in_channels} and {query_in_channels}"
            )
        self.channels = channels
        self.out_channels = out_channels
        self.key_project = projection(
            key_in_channels, channels, key_query_num_convs, key_query_norm, norm_layer, act_layer
        )
        self.query_project = (
            self.key_project
            if share_key_query
            else projection(query_in_channels, channels, key_query_num_convs, key_query_norm, norm_layer, act_layer)
        )
        self.value_project = projection(
            key_in_channels,
            channels if with_out else out_channels,
            value_out_num_convs,
            value_out_norm,
            norm_layer,
            act_layer,
        )
        self.out_project = (
            projection(channels, out_channels, value_out_num_convs, value_out_norm, norm_layer, act_layer)
            if with_out
            else None
        )
        if self.out_project is not None and not value_out_norm:
            for p in self.out_project.parameters():  # a plain output conv starts at zero (mmseg's init)
                nn.init.zeros_(p)
        self.key_downsample = key_downsample

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query_feats.shape
        query = self.query_project(query_feats).flatten(2).transpose(1, 2)  # (B, Nq, C)
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key, value = self.key_downsample(key), self.key_downsample(value)
        key = key.flatten(2).transpose(1, 2)  # (B, Nk, C)
        value = value.flatten(2).transpose(1, 2)  # (B, Nk, Cv)
        context = F.scaled_dot_product_attention(
            query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), scale=self.channels**-0.5
        ).squeeze(1)  # (B, Nq, Cv)
        context = context.transpose(1, 2).reshape(b, -1, h, w)  # (B, Cv, h, w)
        if self.out_project is not None:
            context = self.out_project(context)
        return context
