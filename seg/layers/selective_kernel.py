"""Selective Kernel convolution.

Paper: "Selective Kernel Networks", Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang, CVPR 2019,
https://arxiv.org/abs/1903.06586

Split: one conv branch per kernel size (a 5x5 branch is a 3x3 conv with dilation 2, as in the paper),
each conv + norm + activation. Fuse: ``s = avgpool(sum of branches)``, ``z = act(fc(s))`` with
``d = max(C / r, L)``. Select: one FC per branch (a single conv to M*C), softmax across branches,
weighted sum. The paper normalises ``z`` with BatchNorm; on pooled vectors that fails for batch 1 in
training, so ``z`` is not normalised here.
"""

from __future__ import annotations

import torch
from torch import nn


class SelectiveKernel(nn.Module):
    """Selective Kernel unit, stride 1, channels in = out.

    Args:
        channels: input (= output) channels.
        kernel_sizes: one branch per (odd) kernel size (paper: (3, 5)).
        reduction: reduction ratio r of the fuse FC (paper: 16).
        min_attn_channels: L, the smallest width of the fuse FC (paper: 32).
        groups: groups of the branch convs (paper uses ResNeXt's 32); must divide channels.
        use_dilation: build a k x k branch as a 3x3 conv with dilation (k - 1) / 2 (paper), else a k x k conv.
        act_layer: activation class.
        norm_layer: norm of the branches.
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: tuple[int, ...] = (3, 5),
        reduction: float = 16,
        min_attn_channels: int = 32,
        groups: int = 1,
        use_dilation: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) < 2 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"SelectiveKernel: need at least two odd kernel sizes, got {kernel_sizes}")
        if channels % groups != 0:
            raise ValueError(f"SelectiveKernel: groups ({groups}) must divide channels ({channels})")
        self.num_branches = len(kernel_sizes)
        branches = []
        for k in kernel_sizes:
            if use_dilation:
                dilation = (k - 1) // 2
                conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=groups, bias=False)
            else:
                conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=False)
            branches.append(nn.Sequential(conv, norm_layer(channels), act_layer()))
        self.branches = nn.ModuleList(branches)
        attn_channels = max(int(channels / reduction), min_attn_channels)
        self.fc = nn.Conv2d(channels, attn_channels, kernel_size=1)
        self.act = act_layer()
        self.fc_select = nn.Conv2d(attn_channels, channels * self.num_branches, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)  # (B, M, C, H, W)
        s = feats.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) fuse
        z = self.act(self.fc(s))  # (B, d, 1, 1)
        attn = self.fc_select(z).reshape(b, self.num_branches, c, 1, 1)  # (B, M, C, 1, 1)
        attn = torch.softmax(attn, dim=1)  # softmax across branches
        return (feats * attn).sum(dim=1)  # (B, C, H, W) select
