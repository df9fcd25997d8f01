"""EMANet head: expectation-maximisation attention with a small set of bases kept as a running average.

"Expectation-Maximization Attention Networks for Semantic Segmentation", Li et al., ICCV 2019,
https://arxiv.org/abs/1907.13426. Layout mirrors mmsegmentation 1.x ``EMAHead`` / ``EMAModule``
(``configs/_base_/models/emanet_r50-d8.py``: 512 EMA channels, 64 bases, 3 EM stages, momentum 0.1,
head width 256): ``ema_in_conv`` (3x3) -> frozen 1x1 ``ema_mid_conv`` -> EM attention -> ReLU ->
``ema_out_conv`` (1x1 + BN) -> residual ReLU -> ``bottleneck`` -> ``conv_cat([input, features])`` ->
dropout -> ``conv_seg``.

Like mmseg, the EM iterations run without gradient (the reconstruction is a fixed function of the bases
and responsibilities), and in train mode the bases buffer moves towards the batch's bases with
``momentum``; under ``torch.distributed`` the batch bases are averaged over all processes first
(mmseg's ``reduce_mean``), so every rank keeps the same bases.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .conv_bn_act import ConvBnAct
from .decode_head import DecodeHead

__all__ = ["EMAHead", "EMAModule"]


def _mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over the processes of the default group (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t / dist.get_world_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EMAModule(nn.Module):
    """EM attention: ``num_stages`` E/M steps from the stored bases, then the low-rank reconstruction.

    E step: responsibilities ``z = softmax_k(x . mu_k)``; M step: ``mu_k = normalize(sum_n z_nk x_n /
    sum_n z_nk)``. Output: ``sum_k z_nk mu_k`` at every position. Runs in fp32 (the bases are unit vectors
    whose dot products feed a softmax).

    Args:
        channels: channels of the input (= output).
        num_bases: number of bases K (mmseg: 64).
        num_stages: EM iterations (mmseg: 3).
        momentum: moving-average factor of the stored bases in train mode (mmseg: 0.1).
    """

    def __init__(self, channels: int, num_bases: int = 64, num_stages: int = 3, momentum: float = 0.1) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"EMAModule: num_stages must be >= 1, got {num_stages}")
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.randn(1, channels, num_bases) * math.sqrt(2.0 / num_bases)
        self.register_buffer("bases", F.normalize(bases, dim=1, p=2))  # (1, C, K), unit columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            feats = x.reshape(b, c, h * w).float()  # (B, C, N)
            bases = self.bases.float().expand(b, -1, -1)  # (B, C, K)
            for _ in range(self.num_stages):
                attn = torch.softmax(torch.bmm(feats.transpose(1, 2), bases), dim=2)  # E: (B, N, K)
                attn_normed = F.normalize(attn, dim=1, p=1)  # each basis' responsibilities sum to 1 over N
                bases = F.normalize(torch.bmm(feats, attn_normed), dim=1, p=2)  # M: (B, C, K)
            recon = torch.bmm(bases, attn.transpose(1, 2))  # (B, C, K) @ (B, K, N) -> (B, C, N)
            if self.training:
                new = F.normalize(_mean_over_processes(bases.mean(dim=0, keepdim=True)), dim=1, p=2)  # (1, C, K)
                self.bases.mul_(1 - self.momentum).add_(new.to(self.bases.dtype), alpha=self.momentum)
        return recon.to(x.dtype).reshape(b, c, h, w)


class EMAHead(DecodeHead):
    """EMANet decode head; returns ``{'out': logits at feature resolution}``.

    Args:
        in_channels: channels of the input feature map (stage 4).
        num_classes: number of output classes.
        channels: width of the bottleneck and ``conv_cat`` (mmseg's recipe: 256).
        ema_channels: width of the EM attention (mmseg: 512).
        num_bases: number of bases (mmseg: 64).
        num_stages: EM iterations (mmseg: 3).
        momentum: moving-average factor of the bases (mmseg: 0.1).
        concat_input: fuse ``[input, features]`` with ``conv_cat`` before the classifier.
        dropout: ``Dropout2d`` probability before the classifier.
        norm_layer: normalisation class.
        act_layer: activation class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        ema_channels: int = 512,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
        self.ema_in_conv = ConvBnAct(in_channels, ema_channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        # a fixed random 1x1 projection (with bias) in front of the EM steps, as in the paper's code
        self.ema_mid_conv = ConvBnAct(ema_channels, ema_channels, 1, norm_layer=None, act_layer=None)
        self.ema_mid_conv.requires_grad_(False)
        self.ema_out_conv = ConvBnAct(ema_channels, ema_channels, 1, norm_layer=norm_layer, act_layer=None)
        self.bottleneck = ConvBnAct(ema_channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
        self.conv_cat = (
            ConvBnAct(in_channels + channels, channels, 3, norm_layer=norm_layer, act_layer=act_layer)
            if concat_input
            else None
        )
        self.add_classifier(dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        identity = self.ema_in_conv(x)  # (B, E, h, w)
        recon = self.ema_out_conv(F.relu(self.ema_module(self.ema_mid_conv(identity))))
        feats = self.bottleneck(F.relu(identity + recon))  # (B, C, h, w)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))  # (B, C_in + C, h, w) -> (B, C, h, w)
        return {"out": self.classify(feats)}
