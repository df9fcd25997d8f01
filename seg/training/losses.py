"""Segmentation losses: pixel-wise cross-entropy with an ignore label, and online hard example mining (OHEM).

OHEM follows mmsegmentation's ``OHEMPixelSampler`` (threshold mode), from "Training Region-based Object Detectors
with Online Hard Example Mining" (Shrivastava et al., https://arxiv.org/abs/1604.03540) as used by PSPNet/OCNet
recipes: among the labelled pixels, keep those whose predicted probability of the true class is below
``max(thresh, p_k)``, where ``p_k`` is the ``min_kept * batch``-th smallest such probability, so at least
``min_kept`` pixels per image are kept. As in mmseg, the kept per-pixel losses are averaged over *all* pixels
of the batch (``weight_reduce_loss`` with ``reduction='mean'``), which is what the published recipes trained with.

The network returns a dict of logits at input resolution (``out``, ``aux``, DANet's ``pam``/``cam``); the
:class:`SegLoss` sums the per-output losses with their weights (``aux`` 0.4, everything else 1.0).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over labelled pixels. logits (B, C, H, W), target (B, H, W) int64."""
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


@torch.no_grad()
def ohem_weights(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100_000,
                 ignore_index: int = 255) -> Tensor:
    """The (B, H, W) 0/1 weight of the hard pixels that OHEM keeps (mmseg ``OHEMPixelSampler``, thresh mode)."""
    weight = torch.zeros_like(target, dtype=torch.float32)
    valid = target != ignore_index  # (B, H, W)
    if not valid.any():
        return weight
    batch_kept = min_kept * target.shape[0]
    prob = logits.float().softmax(dim=1)  # (B, C, H, W)
    safe_target = target.masked_fill(~valid, 0).unsqueeze(1)  # (B, 1, H, W)
    true_prob = prob.gather(1, safe_target).squeeze(1)  # (B, H, W)
    valid_prob = true_prob[valid]  # (N,)
    sorted_prob, _ = valid_prob.sort()
    min_threshold = sorted_prob[min(batch_kept, sorted_prob.numel() - 1)]
    threshold = torch.clamp(min_threshold, min=thresh)
    weight[valid] = (valid_prob < threshold).float()
    return weight


def ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100_000,
                       ignore_index: int = 255) -> Tensor:
    """Cross-entropy on the OHEM-kept pixels, averaged over all pixels of the batch (as mmseg)."""
    weight = ohem_weights(logits, target, thresh, min_kept, ignore_index)
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    return (loss * weight).mean()


class SegLoss(nn.Module):
    """Weighted sum of per-output losses for the model's output dict.

    Args:
        loss: ``'ce'`` (cross-entropy) or ``'ohem'`` (hard pixels only; applied to the decode outputs,
            the auxiliary FCN head keeps plain cross-entropy as in mmseg's OHEM recipes).
        aux_weight: weight of the ``'aux'`` output (0.4 in the mmseg/torchvision recipes).
        ignore_index: label value that never contributes (255).
        ohem_thresh: OHEM probability threshold (0.7).
        ohem_min_kept: minimum number of kept pixels per image (100k).
    """

    def __init__(self, loss: Literal["ce", "ohem"] = "ce", aux_weight: float = 0.4, ignore_index: int = 255,
                 ohem_thresh: float = 0.7, ohem_min_kept: int = 100_000) -> None:
        super().__init__()
        if loss not in ("ce", "ohem"):
            raise ValueError(f"Unknown loss {loss!r}; valid: 'ce', 'ohem'")
        self.loss = loss
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept

    def weight(self, name: str) -> float:
        """Loss weight of one output: 'aux' -> aux_weight, 'out'/'pam'/'cam'/... -> 1.0."""
        return self.aux_weight if name == "aux" else 1.0

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total loss, {output name: unweighted loss})."""
        parts: dict[str, Tensor] = {}
        for name, logits in outputs.items():
            if logits.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"output {name!r} has spatial size {tuple(logits.shape[-2:])} but the mask is "
                                 f"{tuple(target.shape[-2:])}; models must return logits at input resolution")
            if self.loss == "ohem" and name != "aux":
                parts[name] = ohem_cross_entropy(logits, target, self.ohem_thresh, self.ohem_min_kept,
                                                 self.ignore_index)
            else:
                parts[name] = cross_entropy(logits, target, self.ignore_index)
        total = sum(self.weight(k) * v for k, v in parts.items())
        return total, parts
