"""The statistics of a comparison: the paired hierarchical bootstrap over the per-image counts (their mIoU and
resampling weights from :mod:`seg.evaluation`), and the summary (``compare.json``'s content). Numpy only; see the
package docstring for the procedure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from seg.evaluation import image_weights, miou_from_counts

__all__ = ["VERDICTS", "bootstrap_draws", "bootstrap_miou", "compare_to_baseline", "summarize"]

VERDICTS = ("better", "worse", "within noise")


def bootstrap_draws(
    n_images: int, seeds_per_head: dict[str, int], samples: int, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The resamples: image indices (samples, n_images), shared by all heads, and per head seed indices
    (samples, n_seeds), drawn independently per head."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, n_images, (samples, n_images))
    seeds = {h: rng.integers(0, n, (samples, n)) for h, n in seeds_per_head.items()}
    return images, seeds


def bootstrap_miou(counts: np.ndarray, image_idx: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Replicates (samples,) of a head's mean-over-seeds mIoU.

    counts: (S, N, 3, C) per seed and image; image_idx: (samples, N); seed_idx: (samples, S).
    """
    s, n = counts.shape[:2]
    w_img = image_weights(image_idx, n)  # (samples, N)
    w_seed = np.stack([np.bincount(r, minlength=s) for r in seed_idx]).astype(np.float64)  # (samples, S)
    summed = np.einsum("bn,snkc->bskc", w_img, counts.astype(np.float64))  # (samples, S, 3, C)
    per_seed = miou_from_counts(summed)  # (samples, S)
    return np.nansum(per_seed * w_seed, axis=1) / s


def compare_to_baseline(
    counts: dict[str, np.ndarray], baseline: str, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per head: point difference of mean-over-seeds mIoU to ``baseline``, bootstrap interval and verdict.

    counts: head -> (S, N, 3, C) per-image counts; every head must cover the same N validation images in the
    same order.
    """
    if baseline not in counts:
        raise ValueError(f"baseline head {baseline!r} is not among the compared heads {sorted(counts)}")
    n_images = {c.shape[1] for c in counts.values()}
    if len(n_images) != 1:
        raise ValueError(f"heads were evaluated on different numbers of images {sorted(n_images)}")
    image_idx, seed_idx = bootstrap_draws(n_images.pop(), {h: c.shape[0] for h, c in counts.items()}, samples, seed)
    reps = {h: bootstrap_miou(c, image_idx, seed_idx[h]) for h, c in counts.items()}
    point = {h: float(np.nanmean(miou_from_counts(c.sum(1)))) for h, c in counts.items()}
    alpha = (1.0 - confidence) / 2
    out = {}
    for h in counts:
        diff = reps[h] - reps[baseline]
        lo, hi = (float(v) for v in np.nanquantile(diff, [alpha, 1 - alpha]))
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "within noise"
        out[h] = {
            "baseline": baseline,
            "diff": point[h] - point[baseline],
            "ci_low": lo,
            "ci_high": hi,
            "confidence": confidence,
            "verdict": verdict if h != baseline else "baseline",
        }
    return out


def _mean(vals: list[Any]) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(
    runs: list[dict[str, Any]], baseline: str = "fcn", samples: int = 2000, confidence: float = 0.95
) -> dict[str, Any]:
    """compare.json's content: ``runs``, ``heads`` (mean/std/n, costs, difference to the baseline)."""
    heads = list(dict.fromkeys(r["head"] for r in runs))
    by_head = {
        h: sorted((r for r in runs if r["head"] == h), key=lambda r: (r["seed"] is None, r["seed"])) for h in heads
    }
    for h, rs in by_head.items():
        if len({r["seed"] for r in rs}) != len(rs):
            raise ValueError(f"head {h}: several runs with the same seed ({[r['run'] for r in rs]})")
        if any(r["_paths"] != rs[0]["_paths"] for r in rs):
            raise ValueError(f"head {h}: runs evaluated on different validation images")
    ref_paths = by_head[heads[0]][0]["_paths"]
    for h in heads:
        if [Path(p).name for p in by_head[h][0]["_paths"]] != [Path(p).name for p in ref_paths]:
            raise ValueError(f"heads {heads[0]} and {h} were evaluated on different validation images")
    deltas: dict[str, dict[str, Any]] = {}
    if baseline in by_head:
        counts = {h: np.stack([r["_counts"] for r in rs]) for h, rs in by_head.items()}  # (S, N, 3, C)
        deltas = compare_to_baseline(counts, baseline, samples, confidence)
    out_heads = {}
    for h, rs in by_head.items():
        m = [r["mIoU"] for r in rs]
        classes = list(rs[0]["per_class_IoU"])
        out_heads[h] = {
            "n": len(rs),
            "seeds": [r["seed"] for r in rs],
            "mIoU_mean": float(np.mean(m)),
            "mIoU_std": float(np.std(m, ddof=1)) if len(m) > 1 else None,
            "per_class_IoU_mean": {c: _mean([r["per_class_IoU"][c] for r in rs]) for c in classes},
            **{k: _mean([r[k] for r in rs]) for k in ("params", "gflops", "train_img_s", "eval_img_s", "peak_mem_mb")},
            "vs_baseline": deltas.get(h),
        }
    return {
        "baseline": baseline if baseline in by_head else None,
        "bootstrap": {
            "samples": samples,
            "confidence": confidence,
            "seed": 0,
            "procedure": "paired over validation images (one resample for all heads), seeds resampled "
            "per head; statistic: mean over seeds of dataset-level mIoU; percentile "
            "interval of the difference to the baseline",
        },
        "heads": out_heads,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }
