"""Evaluation, one home: a model's predictions for an evaluation batch, scored at the original label size, and
everything measured from them in one pass.

Validation during training, ``seg.evaluate`` and ``seg.compare``'s evaluation pass all score through
:func:`predict_batch` and :class:`Scores` (the LightningModule's shared ``_eval_step``), so the three report the
same number for the same checkpoint and data.

**Protocol (mmseg 1.x).** The network sees the image resized to the test scale (``batch['image']``, padded
bottom/right to the batch's largest), the ground truth keeps its original size (``batch['mask']``), and the logits
are resized bilinearly to that size before the argmax (:func:`seg.models.inference.predict_labels`; whole image,
slide windows, test-time scales and flip as :class:`~seg.models.inference.EvalSettings` says).

**Scores.** One ``bincount`` per batch over (image, label, prediction) triples gives each image's confusion matrix;
their sum is the dataset-level confusion matrix (mIoU, aAcc, mAcc, per-class IoU/Acc as mmseg's ``IoUMetric``),
and their diagonals and marginals are each image's true-positive, ground-truth and predicted pixel counts per
class, which ``seg.compare``'s bootstrap resamples. Under DDP the matrices are summed and the per-image counts
gathered across processes; the validation sampler never pads, so every image counts once.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from seg.models.inference import EvalSettings, predict_labels

__all__ = ["Scores", "metrics_from_confmat", "predict_batch"]


def _shapes(sizes: Tensor | None, default: Sequence[int], batch: int) -> list[tuple[int, int]]:
    """Per-sample (H, W) from a (B, 2) size tensor of the batch, or the tensor's own size for every sample."""
    if sizes is None:
        return [(int(default[0]), int(default[1]))] * batch
    return [(int(h), int(w)) for h, w in sizes.tolist()]


def predict_batch(fn: Callable[[Tensor], Tensor], batch: dict[str, Any], settings: EvalSettings) -> Tensor:
    """Predictions (B, H, W) in the layout of ``batch['mask']``: each image's at its ground truth's original size,
    ``ignore_index`` where the mask is padding.

    ``fn`` maps normalised images (B, 3, h, w) to logits at input resolution. ``batch['img_shape']`` /
    ``batch['ori_shape']`` (B, 2) give each sample's unpadded image and mask sizes (absent: the full tensors). A
    batch of one size runs as one forward; mixed sizes (ADE20K with val_batch_size > 1) run image by image, so no
    prediction is made on padding.
    """
    images, masks = batch["image"], batch["mask"]
    b = images.shape[0]
    img_shapes = _shapes(batch.get("img_shape"), images.shape[-2:], b)
    ori_shapes = _shapes(batch.get("ori_shape"), masks.shape[-2:], b)
    if len(set(img_shapes)) == 1 and len(set(ori_shapes)) == 1:
        (h, w), (oh, ow) = img_shapes[0], ori_shapes[0]
        preds = predict_labels(fn, images[..., :h, :w], settings, (oh, ow))  # (B, oh, ow)
        if (oh, ow) == tuple(masks.shape[-2:]):
            return preds
        out = masks.new_full(masks.shape, settings.ignore_index)
        out[:, :oh, :ow] = preds
        return out
    out = masks.new_full(masks.shape, settings.ignore_index)
    for i, ((h, w), (oh, ow)) in enumerate(zip(img_shapes, ori_shapes)):
        out[i, :oh, :ow] = predict_labels(fn, images[i : i + 1, :, :h, :w], settings, (oh, ow))[0]
    return out


def metrics_from_confmat(confmat: Tensor) -> dict[str, Tensor]:
    """mIoU / aAcc / mAcc and per-class IoU, Acc from a (C, C) confusion matrix (rows: target, cols: pred).

    Classes in neither the ground truth nor the predictions have IoU NaN and are left out of the mean (mmseg)."""
    confmat = confmat.double()
    tp = confmat.diag()  # (C,)
    gt = confmat.sum(dim=1)  # (C,) pixels labelled c
    pred = confmat.sum(dim=0)  # (C,) pixels predicted c
    union = gt + pred - tp
    iou = tp / union  # NaN where the class is absent from both
    acc = tp / gt  # NaN where the class is absent from the ground truth
    return {
        "mIoU": iou.nanmean(),
        "aAcc": tp.sum() / confmat.sum().clamp(min=1),
        "mAcc": acc.nanmean(),
        "IoU": iou,
        "Acc": acc,
    }


class Scores:
    """What one evaluation pass measures: the dataset confusion matrix and every image's counts.

    Args:
        num_classes: number of classes.
        ignore_index: the label that is never counted (255; batch padding carries it too).

    Attributes (after :meth:`sync`, on every process):
        confmat: (C, C) int64 pixel counts, rows = ground truth, columns = prediction.
        counts: (N, 3, C) int64 numpy: per image (sorted by path) and class the true-positive, ground-truth and
            predicted pixel counts.
        paths: the N image paths, sorted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.confmat: Tensor | None = None
        self._counts: list[Tensor] = []  # (B, 3, C) per batch, on the predictions' device until sync()
        self._paths: list[str] = []
        self.counts = np.zeros((0, 3, self.num_classes), np.int64)
        self.paths: list[str] = []

    @property
    def num_images(self) -> int:
        return len(self._paths)

    def update(self, preds: Tensor, target: Tensor, paths: Sequence[str] | None = None) -> None:
        """Add a batch: ``preds`` and ``target`` (B, H, W) labels; ``target`` may hold ``ignore_index``."""
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
        c = self.num_classes
        # a label >= num_classes (other than ignore_index) would land in a wrong bin of the bincount
        bad = (target >= c) & (target != self.ignore_index) | (target < 0)
        if bool(bad.any()):
            raise ValueError(
                f"mask holds label(s) {sorted(target[bad].unique().tolist())[:10]} outside [0, {c}) and != ignore "
                f"{self.ignore_index}; fix the data or num_classes"
            )
        b = preds.shape[0]
        valid = target != self.ignore_index
        image = torch.arange(b, device=target.device).view(b, *([1] * (target.ndim - 1)))
        idx = (image * c + torch.where(valid, target, 0).long()) * c + preds.long()  # (B, H, W)
        cm = torch.bincount(idx[valid], minlength=b * c * c).view(b, c, c)  # per image: rows target, cols pred
        self.confmat = cm.sum(0) if self.confmat is None else self.confmat + cm.sum(0)
        self._counts.append(torch.stack([cm.diagonal(dim1=1, dim2=2), cm.sum(2), cm.sum(1)], dim=1))  # (B, 3, C)
        self._paths += [str(p) for p in paths] if paths is not None else [f"#{len(self._paths) + i}" for i in range(b)]

    def sync(self, device: torch.device | str | None = None) -> "Scores":
        """Sum the confusion matrices and gather the per-image counts of every process (a no-op without
        ``torch.distributed``); fills ``confmat``, ``counts`` and ``paths``. Every process must call it."""
        c = self.num_classes
        confmat = self.confmat if self.confmat is not None else torch.zeros(c, c, dtype=torch.int64, device=device)
        counts = torch.cat(self._counts).cpu().numpy() if self._counts else np.zeros((0, 3, c), np.int64)
        paths = list(self._paths)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            confmat = confmat.clone()
            dist.all_reduce(confmat)  # sum
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (paths, counts))
            paths = [p for ps, _ in gathered for p in ps]
            counts = np.concatenate([cs for _, cs in gathered])
        order = sorted(range(len(paths)), key=paths.__getitem__)  # the same order whatever the process count
        self.confmat, self.paths, self.counts = confmat, [paths[i] for i in order], counts[order]
        return self

    def metrics(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """mIoU, aAcc, mAcc (floats), per-class IoU and Acc (dicts by class name; NaN where undefined) and the
        number of images, from the synced confusion matrix."""
        if self.confmat is None:
            raise RuntimeError("Scores.metrics() before sync()")
        res = metrics_from_confmat(self.confmat)
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(self.num_classes)]
        return {
            "mIoU": float(res["mIoU"]),
            "aAcc": float(res["aAcc"]),
            "mAcc": float(res["mAcc"]),
            "per_class_IoU": dict(zip(names, res["IoU"].tolist())),
            "per_class_Acc": dict(zip(names, res["Acc"].tolist())),
            "num_images": len(self.paths),
        }
