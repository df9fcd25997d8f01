"""The report's charts (matplotlib, Agg backend: no display needed): the confusion matrix, per-class IoU with its
interval, the per-image mIoU histogram and the reliability diagram. Each builder returns the figure; :func:`save`
writes it. Every text is at least :data:`MIN_FONT` points, and figure sizes are bounded at any class count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "FULL_MATRIX_LIMIT",
    "MIN_FONT",
    "TOP_CONFUSIONS",
    "confusion_figure",
    "iou_figure",
    "miou_histogram",
    "reliability_figure",
    "save",
    "top_confusions",
]

MIN_FONT = 7  # points
FULL_MATRIX_LIMIT = 30  # classes up to which the whole matrix is drawn; beyond: the top confusions
TOP_CONFUSIONS = 30
FONT = 8


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def row_normalised(confmat: np.ndarray) -> np.ndarray:
    """Each ground-truth row divided by its pixel count (rows of absent classes stay 0)."""
    rows = confmat.sum(1, keepdims=True).astype(np.float64)
    return np.divide(confmat, rows, out=np.zeros(confmat.shape), where=rows > 0)


def top_confusions(confmat: np.ndarray, names: Sequence[str], n: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The ``n`` largest off-diagonal row-normalised entries: which class's pixels go to which other class, most
    first (ties: by pixel count). Entries with no pixel are left out."""
    norm = row_normalised(confmat)
    np.fill_diagonal(norm, 0)
    gt, pred = np.nonzero(norm)
    order = np.lexsort((-confmat[gt, pred], -norm[gt, pred]))[:n]
    return [
        {
            "gt": names[gt[i]],
            "pred": names[pred[i]],
            "fraction": float(norm[gt[i], pred[i]]),
            "pixels": int(confmat[gt[i], pred[i]]),
        }
        for i in order
    ]


def confusion_figure(confmat: np.ndarray, names: Sequence[str]) -> tuple[Figure, str]:
    """The row-normalised confusion matrix as a heat map with class names (up to :data:`FULL_MATRIX_LIMIT`
    classes), else a ranked bar chart of the :data:`TOP_CONFUSIONS` largest confusions: a 150 x 150 matrix has
    names too small to read and hides its few large off-diagonal cells; the ranked list names them (the CSV keeps
    the full matrix). Returns ``(figure, layout)`` with layout 'matrix' or 'top'."""
    c = len(names)
    if c <= FULL_MATRIX_LIMIT:
        norm = row_normalised(confmat)
        side = min(3.0 + 0.42 * c, 15.0)
        fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
        im = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
        ax.set_xticks(range(c), names, rotation=90, fontsize=FONT)
        ax.set_yticks(range(c), names, fontsize=FONT)
        ax.set_xlabel("prediction", fontsize=FONT + 1)
        ax.set_ylabel("ground truth", fontsize=FONT + 1)
        if c <= 20:  # a percentage in every cell of at least 1 %
            for (i, j), v in np.ndenumerate(norm):
                if v >= 0.01:
                    colour = "white" if v > 0.5 else "black"
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=MIN_FONT, color=colour)
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=FONT)
        bar.set_label("% of the ground-truth class's pixels", fontsize=FONT)
        ax.set_title("Confusion matrix (row-normalised)", fontsize=FONT + 2)
        return fig, "matrix"
    top = top_confusions(confmat, names)
    fig, ax = plt.subplots(figsize=(9.0, 1.2 + 0.26 * max(len(top), 1)), layout="constrained")
    y = np.arange(len(top))
    ax.barh(y, [100 * t["fraction"] for t in top], color="#c0504d")
    ax.set_yticks(y, [f"{t['gt']} → {t['pred']}" for t in top], fontsize=FONT)
    ax.set_ylim(len(top) - 0.5, -0.5)  # largest on top, no empty margin
    for yi, t in zip(y, top):
        ax.text(100 * t["fraction"], yi, f" {t['pixels']:,} px", va="center", fontsize=MIN_FONT)
    ax.set_xlim(0, max([100 * t["fraction"] for t in top] + [1]) * 1.25)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlabel("% of the ground-truth class's pixels predicted as the other class", fontsize=FONT)
    ax.set_title(f"Top {len(top)} confusions of {c} classes (ground truth → prediction)", fontsize=FONT + 2)
    return fig, "top"


def iou_figure(names: Sequence[str], iou: np.ndarray, low: np.ndarray, high: np.ndarray, level: float) -> Figure:
    """Per-class IoU sorted (best on top) as horizontal bars with the bootstrap interval as error bars; classes
    without an IoU (absent from ground truth and prediction) are listed in the title's count only."""
    ok = ~np.isnan(iou)
    order = [i for i in np.argsort(-np.where(ok, iou, -1)) if ok[i]]
    fig, ax = plt.subplots(figsize=(8.0, 1.3 + 0.17 * max(len(order), 1)), layout="constrained")
    y = np.arange(len(order))
    v = 100 * iou[order]
    lo, hi = 100 * low[order], 100 * high[order]
    err = np.stack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])  # no interval: no bar
    ax.barh(y, v, xerr=np.clip(err, 0, None), color="#4f81bd", ecolor="#222222", capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(y, [names[i] for i in order], fontsize=FONT)
    ax.set_ylim(len(order) - 0.5, -0.5)  # best on top, no empty margin
    ax.set_xlim(0, 100)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlabel(f"IoU (%), error bars: {100 * level:.0f} % bootstrap interval over images", fontsize=FONT)
    missing = int((~ok).sum())
    extra = f" ({missing} class(es) absent from ground truth and prediction not shown)" if missing else ""
    ax.set_title(f"Per-class IoU{extra}", fontsize=FONT + 2)
    ax.grid(axis="x", alpha=0.3)
    return fig


def miou_histogram(values: np.ndarray) -> Figure:
    """Histogram of per-image mIoU (over the classes in each image's ground truth or prediction)."""
    v = 100 * values[~np.isnan(values)]
    fig, ax = plt.subplots(figsize=(7.0, 3.2), layout="constrained")
    ax.hist(v, bins=np.linspace(0, 100, 26), color="#4f81bd", edgecolor="white")
    if v.size:
        ax.axvline(float(np.median(v)), color="#c0504d", lw=1.2, label=f"median {np.median(v):.1f} %")
        ax.legend(fontsize=FONT)
    ax.set_xlabel("per-image mIoU (%)", fontsize=FONT)
    ax.set_ylabel("images", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.set_title(f"Per-image mIoU ({v.size} images)", fontsize=FONT + 2)
    return fig


def reliability_figure(cal: dict[str, Any]) -> Figure:
    """Reliability diagram: accuracy against confidence per bin (the gap to the diagonal shaded), and below it the
    share of pixels per bin."""
    b = cal["bins"]
    edges = np.asarray(cal["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.asarray(cal["accuracy"], dtype=np.float64)
    conf = np.asarray(cal["confidence"], dtype=np.float64)
    count = np.asarray(cal["count"], dtype=np.float64)
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), layout="constrained", sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    has = count > 0
    ax.bar(centres[has], acc[has], width=1 / b, color="#4f81bd", edgecolor="white", label="accuracy")
    ax.bar(
        centres[has],
        (conf - acc)[has],
        bottom=acc[has],
        width=1 / b,
        color="#c0504d",
        alpha=0.35,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="#444444", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="upper left")
    ax.set_title(f"Reliability (ECE {100 * cal['ECE']:.2f} %, {b} bins)", fontsize=FONT + 2)
    total = max(count.sum(), 1)
    ax2.bar(centres, 100 * count / total, width=1 / b, color="#7f7f7f", edgecolor="white")
    ax2.set_xlabel("confidence (top softmax probability)", fontsize=FONT)
    ax2.set_ylabel("% of pixels", fontsize=FONT)
    ax2.tick_params(labelsize=FONT)
    return fig
