"""Dataset-level segmentation metrics from one confusion matrix: mIoU, per-class IoU, aAcc, mAcc.

The confusion matrix is accumulated over the whole split (not averaged per image) and summed across DDP ranks
by torchmetrics, so the numbers equal mmseg's ``IoUMetric`` and the single-process value, provided no sample is
seen twice (the data module's validation sampler does not pad). Classes that appear neither in the ground truth
nor in the predictions have IoU NaN and are left out of the mean, as in mmseg.
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


def metrics_from_confmat(confmat: Tensor) -> dict[str, Tensor]:
    """mIoU / aAcc / mAcc and per-class IoU, Acc from a (C, C) confusion matrix (rows: target, cols: pred)."""
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


class SegMetrics(MulticlassConfusionMatrix):
    """torchmetrics' confusion matrix (``validate_args=False``; states summed across processes) whose
    ``compute()`` returns :func:`metrics_from_confmat`'s dict.

    Args:
        num_classes: number of classes.
        ignore_index: target value that is not counted (255).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        # validate_args=False: no per-batch full scans of the label map inside torchmetrics.
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds: (B, H, W) labels or (B, C, H, W) logits; target: (B, H, W) with ``ignore_index``."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
        # A label >= num_classes (other than ignore_index) would land in a wrong bin of the bincount.
        bad = (target >= self.num_classes) & (target != self.ignore_index)
        if bool(bad.any()):
            raise ValueError(
                f"mask holds label(s) {sorted(target[bad].unique().tolist())[:10]} outside "
                f"[0, {self.num_classes}) and != ignore {self.ignore_index}; fix the data or num_classes"
            )
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return metrics_from_confmat(super().compute())
