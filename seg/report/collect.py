"""What the report needs beyond :class:`seg.evaluation.Scores`, gathered in the same evaluation pass with bounded
memory: calibration bins (O(bins)) and the K worst images (K predictions and ground truths), synced over DDP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from seg.evaluation import miou_from_counts

__all__ = ["Calibration", "ReportCollector", "WorstImage", "WorstImages", "ece_from_bins"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ece_from_bins(count: np.ndarray, conf_sum: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| * n_bin / N (NaN when N = 0)."""
    n = count.sum()
    if n == 0:
        return float("nan")
    nz = count > 0
    return float(np.sum(np.abs(correct[nz] - conf_sum[nz])) / n)  # |acc - conf| * n_bin = |correct - conf_sum|


class Calibration:
    """Streaming reliability bins over labelled pixels: ``bins`` equal-width confidence bins ((k/B, (k+1)/B], the
    first one closed at 0), each with its pixel count, summed confidence and number of right predictions."""

    def __init__(self, bins: int = 15, ignore_index: int = 255) -> None:
        self.bins, self.ignore_index = bins, ignore_index
        self.count = np.zeros(bins, np.int64)
        self.conf_sum = np.zeros(bins, np.float64)
        self.correct = np.zeros(bins, np.int64)
        self._acc: tuple[Tensor, Tensor, Tensor] | None = None  # on the predictions' device until sync()

    def update(self, preds: Tensor, confidence: Tensor, target: Tensor) -> None:
        valid = target != self.ignore_index
        conf = confidence[valid].double()
        right = (preds[valid] == target[valid]).long()
        idx = (torch.ceil(conf * self.bins).long() - 1).clamp(0, self.bins - 1)
        count = torch.bincount(idx, minlength=self.bins)
        conf_sum = torch.zeros(self.bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, conf)
        correct = torch.bincount(idx, weights=right.double(), minlength=self.bins).long()
        if self._acc is None:
            self._acc = (count, conf_sum, correct)
        else:
            self._acc = tuple(a + b for a, b in zip(self._acc, (count, conf_sum, correct)))  # type: ignore[assignment]

    def sync(self, device: torch.device | str | None = None) -> "Calibration":
        if self._acc is None:
            z = torch.zeros(self.bins, dtype=torch.int64, device=device)
            self._acc = (z, z.double(), z.clone())
        parts = [t.clone() for t in self._acc]
        if _distributed():
            for t in parts:
                dist.all_reduce(t)
        self.count, self.conf_sum, self.correct = (t.cpu().numpy() for t in parts)
        return self

    @property
    def ece(self) -> float:
        return ece_from_bins(self.count, self.conf_sum, self.correct)

    def as_dict(self) -> dict[str, Any]:
        n = np.maximum(self.count, 1)
        return {
            "bins": self.bins,
            "edges": np.linspace(0, 1, self.bins + 1).tolist(),
            "count": self.count.tolist(),
            "confidence": np.where(self.count > 0, self.conf_sum / n, np.nan).tolist(),
            "accuracy": np.where(self.count > 0, self.correct / n, np.nan).tolist(),
            "pixels": int(self.count.sum()),
            "ECE": self.ece,
        }


@dataclass
class WorstImage:
    """One image of the worst-K list: its mIoU (over the classes in its ground truth or prediction), path, and its
    prediction and ground truth (H, W) uint8/int16 at the original size (255 = ignore)."""

    mIoU: float
    path: str
    pred: np.ndarray
    mask: np.ndarray

    @property
    def key(self) -> tuple[float, str]:
        return (self.mIoU, self.path)


class WorstImages:
    """The ``k`` images with the lowest per-image mIoU (ties: by path), kept while the pass runs: at most ``k``
    predictions are held after each batch. Images without a labelled or predicted class (mIoU NaN) are skipped."""

    def __init__(self, k: int = 8) -> None:
        self.k = k
        self.items: list[WorstImage] = []

    def update(
        self, preds: Tensor, target: Tensor, counts: Tensor, paths: Sequence[str], sizes: Sequence[tuple[int, int]]
    ) -> None:
        if self.k <= 0:
            return
        miou = miou_from_counts(counts.cpu().numpy())  # (B,)
        worst_kept = self.items[-1].key if len(self.items) >= self.k else None
        dtype = None
        for i, (score, path, (h, w)) in enumerate(zip(miou, paths, sizes)):
            if np.isnan(score) or (worst_kept is not None and (float(score), str(path)) >= worst_kept):
                continue
            if dtype is None:  # uint8 holds every label of up to 255 classes and ignore (255)
                dtype = np.uint8 if max(int(preds.max()), int(target.max())) < 256 else np.int16
            pred = preds[i, :h, :w].cpu().numpy().astype(dtype)
            mask = target[i, :h, :w].cpu().numpy().astype(dtype)
            self.items.append(WorstImage(float(score), str(path), pred, mask))
        self._trim()

    def _trim(self) -> None:
        self.items = sorted(self.items, key=lambda it: it.key)[: self.k]

    def sync(self) -> "WorstImages":
        if _distributed():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.items)
            self.items = [it for items in gathered for it in items]
        self._trim()
        return self


class ReportCollector:
    """The report's share of the evaluation step: fed by ``SegmentationModule._eval_step`` (test stage) with the
    predictions, their confidence and the per-image counts :class:`~seg.evaluation.Scores` computed."""

    def __init__(self, worst: int = 8, bins: int = 15, ignore_index: int = 255) -> None:
        self.calibration = Calibration(bins, ignore_index)
        self.worst = WorstImages(worst)
        self.ignore_index = ignore_index

    def reset(self) -> None:
        self.__init__(self.worst.k, self.calibration.bins, self.ignore_index)  # type: ignore[misc]

    def update(self, preds: Tensor, confidence: Tensor, batch: dict[str, Any], counts: Tensor) -> None:
        target = batch["mask"]
        self.calibration.update(preds, confidence, target)
        b = target.shape[0]
        sizes = batch.get("ori_shape")
        sizes = [tuple(target.shape[-2:])] * b if sizes is None else [(int(h), int(w)) for h, w in sizes.tolist()]
        paths = batch.get("path") or [f"#{i}" for i in range(b)]
        self.worst.update(preds, target, counts, paths, sizes)

    def sync(self, device: torch.device | str | None = None) -> "ReportCollector":
        self.calibration.sync(device)
        self.worst.sync()
        return self
