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

__all__ = [
    "Scores",
    "class_iou_interval",
    "image_weights",
    "iou_from_counts",
    "metrics_from_confmat",
    "miou_from_counts",
    "predict_batch",
]


def _shapes(sizes: Tensor | None, default: Sequence[int], batch: int) -> list[tuple[int, int]]:
    """Per-sample (H, W) from a (B, 2) size tensor of the batch, or the tensor's own size for every sample."""
    if sizes is None:
        return [(int(default[0]), int(default[1]))] * batch
    return [(int(h), int(w)) for h, w in sizes.tolist()]


def predict_batch(
    fn: Callable[[Tensor], Tensor], batch: dict[str, Any], settings: EvalSettings, confidence: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Predictions (B, H, W) in the layout of ``batch['mask']``: each image's at its ground truth's original size,
    ``ignore_index`` where the mask is padding. ``confidence=True``: ``(predictions, confidence)``, the second
    each pixel's largest class probability (B, H, W) float32, 0 on padding (:func:`predict_labels`).

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
        res = predict_labels(fn, images[..., :h, :w], settings, (oh, ow), confidence)  # (B, oh, ow)
        if (oh, ow) == tuple(masks.shape[-2:]):
            return res
        runs = [(slice(None), res)]
    else:
        runs = [
            (slice(i, i + 1), predict_labels(fn, images[i : i + 1, :, :h, :w], settings, (oh, ow), confidence))
            for i, ((h, w), (oh, ow)) in enumerate(zip(img_shapes, ori_shapes))
        ]
    out = masks.new_full(masks.shape, settings.ignore_index)
    conf = torch.zeros(masks.shape, dtype=torch.float32, device=masks.device) if confidence else None
    for rows, res in runs:
        labels, c = res if confidence else (res, None)
        oh, ow = labels.shape[-2:]
        out[rows, :oh, :ow] = labels
        if conf is not None:
            conf[rows, :oh, :ow] = c
    return (out, conf) if conf is not None else out


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

    def update(self, preds: Tensor, target: Tensor, paths: Sequence[str] | None = None) -> Tensor:
        """Add a batch: ``preds`` and ``target`` (B, H, W) labels; ``target`` may hold ``ignore_index``. Returns
        the batch's per-image counts (B, 3, C): true positives, ground truth and predicted pixels per class."""
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
        return self._counts[-1]

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


# -- statistics of the per-image counts (seg.compare's bootstrap and seg.report's intervals) -------------------
def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU (..., C) from counts (..., 3, C) (tp, gt, pred): NaN where a class is in neither."""
    tp, gt, pred = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = (gt + pred - tp).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou_from_counts(counts: np.ndarray) -> np.ndarray:
    """mIoU from summed counts (..., 3, C) -> (...): NaN-IoU classes (no GT, no prediction) left out; NaN where
    every class is."""
    iou = iou_from_counts(counts)
    out = np.full(iou.shape[:-1], np.nan)
    ok = ~np.isnan(iou).all(-1)
    out[ok] = np.nanmean(iou[ok], axis=-1)
    return out


def image_weights(image_idx: np.ndarray, n_images: int) -> np.ndarray:
    """How often each image is drawn (samples, N) float64, from resampled image indices (samples, N)."""
    return np.stack([np.bincount(r, minlength=n_images) for r in image_idx]).astype(np.float64)


def class_iou_interval(
    counts: np.ndarray, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over images of each class's dataset-level IoU: ``(low, high)`` (C,) each.

    counts: (N, 3, C) per image; each resample draws N images with replacement and recomputes the IoU from the
    summed counts. NaN where the class is absent from (nearly) every resample."""
    n = counts.shape[0]
    if n == 0:
        nan = np.full(counts.shape[-1], np.nan)
        return nan, nan.copy()
    idx = np.random.default_rng(seed).integers(0, n, (samples, n))
    flat = counts.reshape(n, -1).astype(np.float64)  # (N, 3 * C)
    summed = (image_weights(idx, n) @ flat).reshape(samples, *counts.shape[1:])  # (samples, 3, C), one BLAS matmul
    iou = iou_from_counts(summed)  # (samples, C)
    alpha = (1.0 - confidence) / 2
    low, high = np.full(iou.shape[1], np.nan), np.full(iou.shape[1], np.nan)
    ok = (~np.isnan(iou)).mean(0) >= 0.5  # a class seen in fewer than half the resamples has no interval
    if ok.any():
        low[ok], high[ok] = np.nanquantile(iou[:, ok], [alpha, 1 - alpha], axis=0)
    return low, high
