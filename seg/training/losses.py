"""Segmentation losses: pixel-wise cross-entropy with an ignore label, and online hard example mining (OHEM).

OHEM follows mmsegmentation's ``OHEMPixelSampler`` (threshold mode), from "Training Region-based Object Detectors
with Online Hard Example Mining" (Shrivastava et al., https://arxiv.org/abs/1604.03540) as used by PSPNet/OCNet
recipes: among the labelled pixels, keep those whose predicted probability of the true class is below
``max(thresh, p_k)``, where ``p_k`` is the ``min_kept * batch``-th smallest such probability, so at least
``min_kept`` pixels per image are kept.

**Normalisation.** mmseg's recipes use ``CrossEntropyLoss`` with its default ``avg_non_ignore=False``: the summed
loss of the labelled (for OHEM: kept) pixels is divided by *all* pixels of the batch, ignored ones included
(``weight_reduce_loss`` with ``avg_factor = label.numel()``). That is the default here too, for CE and OHEM
alike, so loss values and gradients (hence the effective learning rate) are the published recipe's.
``avg_non_ignore=True`` divides by the labelled pixels instead (PyTorch's ``F.cross_entropy`` mean), which is
``N_all / N_valid`` times larger.

The network returns a dict of logits (``out``, ``aux``, DANet's ``pam``/``cam``); the :class:`SegLoss` sums the
per-output losses with their weights (``aux`` 0.4, everything else 1.0).

**Loss terms** (``SegLoss(loss=...)``, ``--model.loss``): ``ce``, ``ohem``, and segmentation_models_pytorch's
``dice`` (``smp.losses.DiceLoss``), ``focal`` (``FocalLoss``) and ``lovasz`` (``LovaszLoss``), all in multiclass
mode with the ignore index, or a weighted sum of distinct terms: ``ce+dice``, ``ce+0.5*dice``, ``0.5*ohem+lovasz``
(grammar: ``term ('+' term)*``, ``term = [weight '*'] name``, weight a positive number; see :func:`parse_loss`).
Every term is applied to every output, the sum weighted per output as above; ``ohem`` on ``aux`` is plain
cross-entropy (mmseg's OHEM recipes). The smp terms get the logits resized bilinearly to the mask size and
normalise themselves (not by ``avg_non_ignore``); with ignored pixels they see only the labelled ones:
``DiceLoss`` zeroes the ignored pixels' probabilities and one-hot targets before its batch-wide sums (the soft
Dice of the labelled pixels; classes absent from the labelled pixels add 0 but count in the class mean),
``FocalLoss`` drops them before its per-class (one-vs-rest sigmoid) focal terms, averaged over pixels then
classes, ``LovaszLoss`` drops them before the Lovasz-softmax over the classes present. A batch without any
labelled pixel gives 0 for every term.

**Resizing inside the loss.** As in mmseg's ``loss_by_feat``, logits at feature resolution are resized
bilinearly (``align_corners=False``) to the mask size before the cross-entropy. Done naively, every output
stores its full-resolution fp32 logits and their log-softmax for backward: 2 x 304 MiB per output for
Cityscapes crops (B=8, 19 classes, 512x1024), 4 outputs for DANet. Here the resize (two matrix products,
:mod:`seg.models.resize`) and the cross-entropy are one autograd function that works in row blocks of about
``LOSS_CHUNK_BYTES`` and keeps only the low-resolution logits plus one fp32 value per pixel (the log-sum-exp);
backward recomputes each block. The result equals ``F.interpolate`` + ``F.cross_entropy`` to fp32 rounding.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg.models.resize import interpolation_matrix

#: The loss terms of ``SegLoss(loss=...)``: seg's fused ``ce`` / ``ohem`` and smp's ``dice``, ``focal``, ``lovasz``.
LOSS_TERMS: tuple[str, ...] = ("ce", "ohem", "dice", "focal", "lovasz")
SMP_TERMS: frozenset[str] = frozenset({"dice", "focal", "lovasz"})
_TERM_RE = re.compile(r"^(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z_]+)$")

#: Size in bytes of one block of full-resolution fp32 logits in the fused resize + cross-entropy.
LOSS_CHUNK_BYTES = 128 * 2**20


class _Resizer:
    """Full-resolution fp32 logits of (B, C, h, w) ``logits``, one block of output rows at a time.

    ``A_h @ X @ A_w^T``: the width product ``Y = X @ A_w^T`` (B, C, h, W) is computed once, each row block is
    ``A_h[rows] @ Y``. The gradient goes the same way back: ``dY = sum_blocks A_h[rows]^T @ dZ``, ``dX = dY @ A_w``.
    """

    def __init__(self, logits: Tensor, size: tuple[int, int]) -> None:
        h, w = logits.shape[-2:]
        self.size = int(size[0]), int(size[1])
        dev = logits.device
        dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 (fp64 stays fp64, for gradcheck)
        self.a_h = None if h == self.size[0] else interpolation_matrix(h, self.size[0], dev).to(dtype)  # (H, h)
        self.a_w = None if w == self.size[1] else interpolation_matrix(w, self.size[1], dev).to(dtype)  # (W, w)
        x = logits.to(dtype)
        self.y = x if self.a_w is None else torch.matmul(x, self.a_w.t())  # (B, C, h, W)

    def blocks(self, chunk_bytes: int) -> list[tuple[int, int]]:
        b, c, _, width = self.y.shape
        rows = max(1, chunk_bytes // max(1, 4 * b * c * width))
        return [(r, min(r + rows, self.size[0])) for r in range(0, self.size[0], rows)]

    def rows(self, r0: int, r1: int) -> Tensor:
        """(B, C, r1 - r0, W) fp32 logits of output rows r0:r1 (a view when no resize is needed: do not modify)."""
        return self.y[:, :, r0:r1] if self.a_h is None else torch.matmul(self.a_h[r0:r1], self.y)

    def grad_input(self, grad_blocks) -> Tensor:
        """Gradient w.r.t. the (B, C, h, w) logits from an iterable of ((r0, r1), dZ block) pairs."""
        g_y = torch.zeros_like(self.y)
        for (r0, r1), g in grad_blocks:
            if self.a_h is None:
                g_y[:, :, r0:r1] = g
            else:
                g_y.add_(torch.matmul(self.a_h[r0:r1].t(), g))
        return g_y if self.a_w is None else torch.matmul(g_y, self.a_w)


@torch.no_grad()
def resized_logit_stats(logits: Tensor, safe_target: Tensor, chunk_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel ``logsumexp`` and true-class logit of the logits resized to the mask size, both (B, H, W) fp32.

    ``safe_target`` (B, H, W) int64 must hold valid class indices everywhere (ignored pixels mapped to 0).
    """
    chunk_bytes = LOSS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    with torch.autocast(logits.device.type, enabled=False):
        resizer = _Resizer(logits, safe_target.shape[-2:])
        b = logits.shape[0]
        lse = logits.new_empty((b, *resizer.size), dtype=resizer.y.dtype)
        true_logit = torch.empty_like(lse)
        for r0, r1 in resizer.blocks(chunk_bytes):
            z = resizer.rows(r0, r1)
            lse[:, r0:r1] = torch.logsumexp(z, dim=1)
            true_logit[:, r0:r1] = z.gather(1, safe_target[:, None, r0:r1]).squeeze(1)
    return lse, true_logit


class _ResizedCrossEntropy(torch.autograd.Function):
    """``sum(weight * CE(resize(logits), target)) / denom`` storing only low-resolution tensors for backward
    (plus the per-pixel log-sum-exp, target and weight, one value per pixel; target and weight are shared
    by every output of a :class:`SegLoss` call)."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        safe_target: Tensor,
        weight: Tensor,
        lse: Tensor,
        true_logit: Tensor,
        denom: Tensor,
        chunk_bytes: int,
    ) -> Tensor:
        ctx.save_for_backward(logits, safe_target, weight, lse, denom)
        ctx.chunk_bytes = chunk_bytes
        return ((lse - true_logit) * weight).sum() / denom

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, safe_target, weight, lse, denom = ctx.saved_tensors
        with torch.autocast(logits.device.type, enabled=False):
            resizer = _Resizer(logits.detach(), safe_target.shape[-2:])
            scale = weight * (grad.to(resizer.y.dtype) / denom)  # (B, H, W): d loss / d CE per pixel

            minus_one = torch.full((), -1.0, dtype=resizer.y.dtype, device=logits.device)

            def blocks():
                for r0, r1 in resizer.blocks(ctx.chunk_bytes):
                    idx = safe_target[:, None, r0:r1]
                    g = (resizer.rows(r0, r1) - lse[:, None, r0:r1]).exp_()  # softmax
                    g.scatter_add_(1, idx, minus_one.expand(idx.shape))  # - one-hot
                    yield (r0, r1), g.mul_(scale[:, None, r0:r1])

            grad_logits = resizer.grad_input(blocks())
        return grad_logits.to(logits.dtype), None, None, None, None, None, None


def _prepare_target(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(int64 target with ignored pixels set to class 0, fp32 0/1 mask of the labelled pixels)."""
    target = target.long()
    valid = target != ignore_index
    return target.masked_fill(~valid, 0), valid.float()


def _fused_ce(
    logits: Tensor,
    safe_target: Tensor,
    valid: Tensor,
    denom: Tensor,
    stats: tuple[Tensor, Tensor] | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    lse, true_logit = stats if stats is not None else resized_logit_stats(logits, safe_target)
    return _ResizedCrossEntropy.apply(
        logits, safe_target, valid if weight is None else weight, lse, true_logit, denom, LOSS_CHUNK_BYTES
    )


def loss_denominator(target: Tensor, valid: Tensor, avg_non_ignore: bool) -> Tensor:
    """What the summed per-pixel loss is divided by: every pixel of the batch (mmseg's default,
    ``avg_non_ignore=False``) or the labelled ones (at least 1, so an all-ignored batch gives 0, not NaN)."""
    if avg_non_ignore:
        return valid.sum().clamp(min=1)
    return torch.tensor(float(target.numel()), device=valid.device)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255, avg_non_ignore: bool = False) -> Tensor:
    """Cross-entropy of ``logits`` (B, C, h, w) resized bilinearly (align_corners=False) to the mask ``target``
    (B, H, W), summed over the labelled pixels and divided by all B*H*W pixels (mmseg ``CrossEntropyLoss``
    default), or by the labelled pixels with ``avg_non_ignore=True`` (then equal to ``F.cross_entropy(
    F.interpolate(logits, (H, W), mode='bilinear'), target, ignore_index=ignore_index)``). A batch without any
    labelled pixel gives 0 (not NaN) and no gradient."""
    safe, valid = _prepare_target(target, ignore_index)
    return _fused_ce(logits, safe, valid, loss_denominator(target, valid, avg_non_ignore))


@torch.no_grad()
def ohem_weights_from_prob(
    true_prob: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255
) -> Tensor:
    """The (B, H, W) 0/1 weight of the hard pixels that OHEM keeps, given the true-class probability per pixel."""
    weight = torch.zeros_like(target, dtype=torch.float32)
    valid = target != ignore_index  # (B, H, W)
    if not valid.any():
        return weight
    batch_kept = min_kept * target.shape[0]
    valid_prob = true_prob.float()[valid]  # (N,)
    sorted_prob, _ = valid_prob.sort()
    min_threshold = sorted_prob[min(batch_kept, sorted_prob.numel() - 1)]
    threshold = torch.clamp(min_threshold, min=thresh)
    weight[valid] = (valid_prob < threshold).float()
    return weight


@torch.no_grad()
def ohem_weights(
    logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255
) -> Tensor:
    """The (B, H, W) 0/1 weight of the hard pixels that OHEM keeps (mmseg ``OHEMPixelSampler``, thresh mode),
    for logits at any resolution (resized to the mask size)."""
    safe, _ = _prepare_target(target, ignore_index)
    lse, true_logit = resized_logit_stats(logits, safe)
    return ohem_weights_from_prob((true_logit - lse).exp(), target, thresh, min_kept, ignore_index)


def _fused_ohem(
    logits: Tensor,
    target: Tensor,
    safe: Tensor,
    valid: Tensor,
    denom: Tensor,
    thresh: float,
    min_kept: int,
    ignore_index: int,
) -> Tensor:
    lse, true_logit = resized_logit_stats(logits, safe)
    weight = ohem_weights_from_prob((true_logit - lse).exp(), target, thresh, min_kept, ignore_index)
    return _fused_ce(logits, safe, valid, denom, stats=(lse, true_logit), weight=weight)


def ohem_cross_entropy(
    logits: Tensor,
    target: Tensor,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
) -> Tensor:
    """Cross-entropy summed over the OHEM-kept pixels, divided like :func:`cross_entropy` (all pixels of the
    batch by default; the labelled pixels with ``avg_non_ignore=True``, as mmseg's sampler + loss do)."""
    safe, valid = _prepare_target(target, ignore_index)
    return _fused_ohem(
        logits, target, safe, valid, loss_denominator(target, valid, avg_non_ignore), thresh, min_kept, ignore_index
    )


def parse_loss(spec: str) -> tuple[tuple[str, float], ...]:
    """``'ce+0.5*dice'`` -> ``(('ce', 1.0), ('dice', 0.5))``: the terms of a loss specification with their weights.

    Grammar: ``term ('+' term)*`` with ``term = [weight '*'] name``, ``name`` one of :data:`LOSS_TERMS`, ``weight``
    a positive number (default 1); spaces are allowed, each name at most once. Anything else raises a
    ``ValueError`` naming the bad part and the valid names.
    """
    valid = ", ".join(LOSS_TERMS)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss {spec!r}: expected one of {valid}, or a weighted sum such as 'ce+0.5*dice'")
    terms: list[tuple[str, float]] = []
    for part in spec.split("+"):
        m = _TERM_RE.match(part.strip().lower())
        if m is None or m.group("name") not in LOSS_TERMS:
            raise ValueError(
                f"loss {spec!r}: cannot read the term {part.strip()!r}. Terms are {valid}, optionally "
                "weighted as '<weight>*<name>' and joined with '+', e.g. 'ce+0.5*dice'"
            )
        name, weight = m.group("name"), float(m.group("weight") or 1.0)
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"loss {spec!r}: the weight of {name!r} must be a positive number, got {weight}")
        if any(name == n for n, _ in terms):
            raise ValueError(f"loss {spec!r}: {name!r} appears twice; give it one weight instead")
        terms.append((name, weight))
    return tuple(terms)


class LossSpec(str):
    """A loss specification string (``'ce'``, ``'ce+0.5*dice'`` ...), checked by :func:`parse_loss` on creation: the
    type of ``SegmentationModule(loss=...)``, so the CLI rejects a misspelt ``--model.loss`` at parse time."""

    def __new__(cls, value: str) -> "LossSpec":
        parse_loss(value)
        return super().__new__(cls, value)


def _smp_loss(name: str, ignore_index: int) -> nn.Module:
    """smp's multiclass loss ``name`` with ``ignore_index`` (imported here: only runs that use one need smp)."""
    from segmentation_models_pytorch import losses as smp_losses

    if name == "dice":
        return smp_losses.DiceLoss("multiclass", ignore_index=ignore_index)
    if name == "focal":
        return smp_losses.FocalLoss("multiclass", ignore_index=ignore_index)
    return smp_losses.LovaszLoss("multiclass", ignore_index=ignore_index)


def _full_resolution(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """fp32 logits (B, C, H, W) at the mask size: bilinear, ``align_corners=False`` (as the fused cross-entropy;
    fp64 stays fp64)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegLoss(nn.Module):
    """Weighted sum of per-output losses for the model's output dict.

    Args:
        loss: ``'ce'`` (cross-entropy), ``'ohem'`` (hard pixels only; applied to the decode outputs,
            the auxiliary FCN head keeps plain cross-entropy as in mmseg's OHEM recipes), smp's ``'dice'``,
            ``'focal'``, ``'lovasz'``, or a weighted sum of them such as ``'ce+dice'`` or ``'ce+0.5*dice'``
            (see :func:`parse_loss` and the module docstring); checked here, naming the valid terms.
        aux_weight: weight of the ``'aux'`` output (0.4 in the mmseg/torchvision recipes).
        ignore_index: label value that never contributes (255).
        ohem_thresh: OHEM probability threshold (0.7).
        ohem_min_kept: minimum number of kept pixels per image (100k).
        avg_non_ignore: divide the summed loss by the labelled pixels instead of all pixels of the batch
            (mmseg's ``CrossEntropyLoss(avg_non_ignore=...)``; False, mmseg's default, is the published recipe).
    """

    def __init__(
        self,
        loss: str = "ce",
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
        avg_non_ignore: bool = False,
    ) -> None:
        super().__init__()
        self.terms = parse_loss(loss)
        self.loss = str(loss)
        self.smp_losses = nn.ModuleDict({n: _smp_loss(n, ignore_index) for n, _ in self.terms if n in SMP_TERMS})
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.avg_non_ignore = avg_non_ignore

    def weight(self, name: str) -> float:
        """Loss weight of one output: 'aux' -> aux_weight, 'out'/'pam'/'cam'/... -> 1.0."""
        return self.aux_weight if name == "aux" else 1.0

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total loss, {output name: unweighted loss}). Logits of any resolution are resized
        bilinearly to the mask size inside the loss (see the module docstring)."""
        safe, valid = _prepare_target(target, self.ignore_index)  # shared by every output (stored once)
        denom = loss_denominator(target, valid, self.avg_non_ignore)
        any_labelled = bool(valid.any()) if self.smp_losses else True  # smp's focal/lovasz give NaN without any
        parts: dict[str, Tensor] = {}
        for name, logits in outputs.items():
            if logits.ndim != 4 or logits.shape[0] != target.shape[0]:
                raise ValueError(
                    f"output {name!r} has shape {tuple(logits.shape)}; expected (B, C, h, w) logits "
                    f"for the mask batch of shape {tuple(target.shape)}"
                )
            part: Tensor | None = None
            full: Tensor | None = None  # fp32 logits at the mask size, for the smp terms
            for term, weight in self.terms:
                if term == "ohem" and name != "aux":
                    value = _fused_ohem(
                        logits, target, safe, valid, denom, self.ohem_thresh, self.ohem_min_kept, self.ignore_index
                    )
                elif term in ("ce", "ohem"):
                    value = _fused_ce(logits, safe, valid, denom)
                elif not any_labelled:
                    value = logits.sum().float() * 0.0  # 0 with a (zero) gradient, as the fused cross-entropy
                else:
                    with torch.autocast(logits.device.type, enabled=False):
                        full = _full_resolution(logits, target.shape[-2:]) if full is None else full
                        value = self.smp_losses[term](full, target.long())
                value = value if weight == 1.0 else weight * value
                part = value if part is None else part + value
            parts[name] = part
        total = sum(self.weight(k) * v for k, v in parts.items())
        return total, parts
