"""Compare heads with seeds, intervals and cost: ``python -m seg.compare``.

Train every head x seed on the same config and budget, evaluate each run, and compare::

    python -m seg.compare --train --config configs/quickstart.yaml --heads fcn ccnet danet nonlocal axial \\
        --seeds 3 [--baseline fcn] [--out runs/compare] [--group NAME] [-- --trainer.max_steps=300 ...]

or compare finished ``train.py`` run directories (the head and seed are read from each run)::

    python -m seg.compare runs/fcn-s0 runs/fcn-s1 runs/danet-s0 runs/danet-s1 --out cmp/

Writes ``compare.md`` (tables), ``compare.png`` (mIoU per head and seed, per-class IoU, mIoU against GFLOPs
and against training throughput: the Pareto view) and ``compare.json`` (machine-readable: ``runs`` with head,
seed, mIoU, per-class IoU and costs per run; ``heads`` with ``mIoU_mean``, ``mIoU_std``, ``n``, costs and the
difference to the baseline with its interval and verdict).

Evaluation pass. After training, each run's ``checkpoints/last.ckpt`` (the same budget for every head; best.ckpt
would be selected on the very validation set being compared) is run once over the validation split with the
run's own config and inference settings; for every image it records the per-class true positives, ground-truth
and predicted pixel counts (``<run>/per_image.npz``, the input of the bootstrap) and the eval images/s
(``<run>/eval.json``). Summed over images these counts are exactly the run's dataset-level confusion-matrix
statistics, so the run's mIoU is the same number ``seg.evaluate`` reports.

Interval (paired, hierarchical bootstrap, ``--bootstrap`` replicates, default 2000, ``--confidence`` 0.95).
A head's statistic is its mean over seeds of the dataset-level mIoU (each seed's IoU per class recomputed from
that seed's summed per-image counts; classes absent from both ground truth and prediction are left out, as in
:mod:`seg.training.metrics`). In every replicate
  1. the validation images are resampled with replacement, once, and the same resample is used for every head
     (paired: image difficulty cancels out of the difference), and
  2. each head's seeds are resampled with replacement, independently per head (so the interval also carries
     the seed-to-seed training noise; with one seed per head this is the plain paired image bootstrap).
The difference of a head to the baseline head is the point estimate ``mIoU_mean(head) - mIoU_mean(baseline)``
with the percentile interval of the replicate differences. Verdict: ``better`` if the whole interval is above
0, ``worse`` if below, else ``within noise``. With few seeds (n=3) the seed part of the interval is somewhat
narrow (the bootstrap's (n-1)/n variance), so read borderline verdicts with care.

Cost, measured in the same runs: parameters (whole network including the training-only aux head), GFLOPs of
one forward pass of one image at the recipe's training crop (eval mode, ``torch.utils.flop_counter`` as in
``seg.bench``; a multiply-add counts 2), train images/s (``summary.json``, after 5 warm-up steps), eval
images/s (the evaluation pass above, batch ``data.val_batch_size``, first batch untimed) and the peak memory
of training: CUDA ``max_memory_allocated`` when it trained on a GPU, else the peak RSS (``wait4``: the largest
of the training process and its DataLoader workers).

W&B: with ``--train`` every run of one comparison gets the W&B group ``--group`` (default: the output folder's
name and a timestamp) and, unless ``--wandb=off`` is passed, the summary table and chart are logged once, as
one extra run ``<group>/summary`` in that group.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from seg.models import all_head_names
from seg.models.smp import default_output_stride, is_smp_head, supported_output_strides

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = ("better", "worse", "within noise")


# -- per-image statistics ---------------------------------------------------------------------------------
def per_image_counts(preds: "Any", target: "Any", num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(B, 3, C) int64: per image and class the true-positive, ground-truth and predicted pixel counts.

    preds, target: (B, H, W) integer tensors; ``ignore_index`` pixels (and batch padding) are not counted.
    """
    import torch

    b = preds.shape[0]
    valid = target != ignore_index
    t = torch.where(valid, target, 0).long()
    p = preds.long()
    # one bincount over (image, target, pred) triples: (B, C, C) confusion matrices
    idx = (torch.arange(b, device=t.device).view(b, 1, 1) * num_classes + t) * num_classes + p
    cm = torch.bincount(idx[valid], minlength=b * num_classes * num_classes).view(b, num_classes, num_classes)
    tp = cm.diagonal(dim1=1, dim2=2)  # (B, C)
    return torch.stack([tp, cm.sum(2), cm.sum(1)], dim=1).cpu().numpy().astype(np.int64)  # (B, 3, C)


def miou_from_counts(counts: np.ndarray) -> np.ndarray:
    """mIoU from summed counts (..., 3, C) -> (...): NaN-IoU classes (no GT, no prediction) left out."""
    tp, gt, pred = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = (gt + pred - tp).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    out = np.full(iou.shape[:-1], np.nan)
    ok = ~np.isnan(iou).all(-1)
    out[ok] = np.nanmean(iou[ok], axis=-1)
    return out


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
    w_img = np.stack([np.bincount(r, minlength=n) for r in image_idx]).astype(np.float64)  # (samples, N)
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


# -- evaluation pass ---------------------------------------------------------------------------------------
def _gflops(model: "Any", crop: Sequence[int], device: "Any") -> float:
    """GFLOPs of one eval-mode forward pass of one (3, H, W) image, counted as seg.bench counts them."""
    from seg.bench import forward_flops

    return forward_flops(model, (1, 3, int(crop[0]), int(crop[1])), device) / 1e9


def evaluate_run(run_dir: str | Path, ckpt: str = "last.ckpt", device: Optional[str] = None) -> dict[str, Any]:
    """The evaluation pass of one run (see the module docstring): writes ``per_image.npz`` and ``eval.json``."""
    import torch

    from seg.models.checkpoint import atomic_write_text
    from seg.training.summary import count_parameters
    from seg.training.tool_cli import SegToolCLI

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / ckpt
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no checkpoint to evaluate (did the run finish?)")
    cli = SegToolCLI(args=["--ckpt", str(ckpt_path), "--data.num_workers=0", "--trainer.logger=false"])
    module, dm = cli.model, cli.datamodule
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(dev).eval()
    dm.setup("test")
    loader = dm.test_dataloader()
    counts, paths = [], []
    seconds, timed = 0.0, 0  # the first batch is warm-up (allocator, kernel selection): not timed
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            t0 = time.perf_counter()
            preds = module.predict_labels(batch["image"].to(dev))  # (B, H, W)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i > 0 or len(loader) == 1:
                seconds += time.perf_counter() - t0
                timed += preds.shape[0]
            counts.append(per_image_counts(preds, batch["mask"].to(dev), module.hparams.num_classes, dm.ignore_index))
            paths += list(batch["path"])
    per_image = np.concatenate(counts)  # (N, 3, C)
    np.savez_compressed(
        run_dir / "per_image.npz", counts=per_image, paths=np.array(paths), classes=np.array(dm.classes)
    )
    crop = list(dm.crop_size)
    result = {
        "ckpt": str(ckpt_path),
        "num_images": len(paths),
        "images_per_s": timed / seconds if seconds else None,
        "eval_device": dev.type,
        "params": count_parameters(module.model),
        "crop_size": crop,
        "gflops": _gflops(module.model, crop, dev),
        "head": module.hparams.head,
        "backbone": module.hparams.backbone,
    }
    atomic_write_text(json.dumps(result, indent=2), run_dir / "eval.json")
    return result


# -- loading runs --------------------------------------------------------------------------------------------
def _run_seed(run_dir: Path) -> Optional[int]:
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        seed = (yaml.safe_load(cfg.read_text()) or {}).get("seed_everything")
        if isinstance(seed, int):
            return seed
    m = re.search(r"-s(\d+)$", run_dir.name)
    return int(m.group(1)) if m else None


def load_run(run_dir: str | Path, evaluate: bool = True) -> dict[str, Any]:
    """One run: head, seed, mIoU and per-class IoU (from its per-image counts), costs; runs the evaluation
    pass first when ``per_image.npz`` is missing and ``evaluate``."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (is it a train.py run dir?)")
    summary = json.loads((run_dir / "summary.json").read_text())
    if not (run_dir / "per_image.npz").is_file() or not (run_dir / "eval.json").is_file():
        if not evaluate:
            raise FileNotFoundError(f"{run_dir}: no per_image.npz / eval.json; run without --no-evaluate")
        evaluate_run(run_dir)
    ev = json.loads((run_dir / "eval.json").read_text())
    with np.load(run_dir / "per_image.npz") as z:
        counts, paths, classes = z["counts"], [str(p) for p in z["paths"]], [str(c) for c in z["classes"]]
    total = counts.sum(0)  # (3, C)
    union = total[1] + total[2] - total[0]
    iou = [float(t / u) if u > 0 else None for t, u in zip(total[0], union)]
    train_meta = (
        json.loads((run_dir / "compare_train.json").read_text()) if (run_dir / "compare_train.json").is_file() else {}
    )
    peak = summary.get("peak_cuda_memory_mb") or train_meta.get("peak_rss_mb")
    return {
        "run": str(run_dir),
        "name": run_dir.name,
        "head": ev.get("head") or summary.get("head"),
        "backbone": ev.get("backbone") or summary.get("backbone"),
        "seed": _run_seed(run_dir),
        "steps": summary.get("global_step"),
        "mIoU": float(miou_from_counts(total)),
        "aAcc": float(total[0].sum() / max(total[1].sum(), 1)),
        "per_class_IoU": dict(zip(classes, iou)),
        "params": ev.get("params"),
        "gflops": ev.get("gflops"),
        "crop_size": ev.get("crop_size"),
        "train_img_s": summary.get("train_images_per_s"),
        "eval_img_s": ev.get("images_per_s"),
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda" if summary.get("peak_cuda_memory_mb") else ("rss" if peak else None),
        "num_images": len(paths),
        "_counts": counts,
        "_paths": paths,
    }


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


# -- report -------------------------------------------------------------------------------------------------
def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{scale * v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    heads = result["heads"]
    base = result["baseline"]
    conf = int(round(100 * result["bootstrap"]["confidence"]))
    classes = list(dict.fromkeys(c for h in heads.values() for c in h["per_class_IoU_mean"]))
    mem_kind = {r["peak_mem_kind"] for r in result["runs"] if r.get("peak_mem_kind")}
    mem = "peak MiB" + (" (CUDA)" if mem_kind == {"cuda"} else " (RSS)" if mem_kind == {"rss"} else "")
    cols = [
        "head",
        "n",
        "mIoU mean ± std",
        f"Δ vs {base} [{conf}% CI]" if base else "Δ",
        "verdict",
        "params (M)",
        "GFLOPs",
        "train img/s",
        "eval img/s",
        mem,
    ] + [f"IoU {c}" for c in classes]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for h, s in sorted(heads.items(), key=lambda kv: -kv[1]["mIoU_mean"]):
        d = s["vs_baseline"]
        delta = (
            "-"
            if d is None or h == base
            else f"{100 * d['diff']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"
        )
        std = f" ± {100 * s['mIoU_std']:.2f}" if s["mIoU_std"] is not None else ""
        cells = [
            h,
            str(s["n"]),
            f"{100 * s['mIoU_mean']:.2f}{std}",
            delta,
            "-" if d is None else d["verdict"],
            _fmt(s["params"], 1e-6, 2),
            _fmt(s["gflops"], 1, 2),
            _fmt(s["train_img_s"]),
            _fmt(s["eval_img_s"]),
            _fmt(s["peak_mem_mb"], 1, 0),
        ] + [_fmt(s["per_class_IoU_mean"].get(c), 100) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    b = result["bootstrap"]
    crops = {tuple(r["crop_size"]) for r in result["runs"] if r.get("crop_size")}
    lines += [
        "",
        f"mIoU/IoU in % on {result['runs'][0]['num_images']} validation images, mean over seeds (std: "
        f"sample std over seeds). Δ: difference of mean mIoU to {base}, {conf}% interval of a paired bootstrap "
        f"({b['samples']} resamples of the validation images, seeds resampled per head); verdict "
        "'better'/'worse' only when the interval excludes 0. GFLOPs: one forward pass at the training crop "
        f"{' / '.join('x'.join(map(str, c)) for c in sorted(crops))}; params include the aux head; "
        "img/s are throughputs of the machine that ran it (noisy on a shared machine).",
        "",
        "| run | head | seed | steps | mIoU | aAcc | train img/s | eval img/s | " + mem + " |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['name']} | {r['head']} | {r['seed']} | {r['steps']} | {_fmt(r['mIoU'], 100, 2)} | "
            f"{_fmt(r['aAcc'], 100, 2)} | {_fmt(r['train_img_s'])} | {_fmt(r['eval_img_s'])} | "
            f"{_fmt(r['peak_mem_mb'], 1, 0)} |"
        )
    return "\n".join(lines) + "\n"


def _pareto(xs: list[float], ys: list[float], lower_x_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both cost and mIoU, sorted by cost."""
    pts = [(x if lower_x_better else -x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None]
    front = [i for cx, cy, i in pts if not any(ox <= cx and oy >= cy and (ox, oy) != (cx, cy) for ox, oy, _ in pts)]
    return sorted(front, key=lambda i: xs[i] if lower_x_better else -xs[i])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(result["heads"])
    stats = result["heads"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0, 0]
    for i, h in enumerate(heads):
        vals = [100 * r["mIoU"] for r in result["runs"] if r["head"] == h]
        ax.scatter([i] * len(vals), vals, color="tab:gray", s=14, zorder=3)
        std = stats[h]["mIoU_std"]
        ax.errorbar(
            [i],
            [100 * stats[h]["mIoU_mean"]],
            yerr=None if std is None else [100 * std],
            fmt="o",
            color="tab:blue",
            capsize=5,
            zorder=4,
        )
    ax.set_xticks(range(len(heads)), heads)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU per seed (grey) and mean ± std")
    ax = axes[0, 1]
    base = result["baseline"]
    conf = int(round(100 * result["bootstrap"]["confidence"]))
    colors = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:gray", "baseline": "black"}
    for i, h in enumerate(heads):
        d = stats[h]["vs_baseline"]
        if d is None:
            continue
        y = 100 * d["diff"]
        err = [[y - 100 * d["ci_low"]], [100 * d["ci_high"] - y]]
        ax.errorbar([i], [y], yerr=err, fmt="o", capsize=5, color=colors[d["verdict"]])
        ax.annotate(
            d["verdict"],
            (i, 100 * d["ci_high"]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize="small",
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(heads)), heads)
    ax.set_ylabel(f"Δ mIoU vs {base} (points)")
    ax.set_title(f"difference to {base}, {conf}% paired-bootstrap interval")
    ax = axes[0, 2]
    classes = list(dict.fromkeys(c for h in heads for c in stats[h]["per_class_IoU_mean"]))
    width = 0.8 / max(1, len(heads))
    x = np.arange(len(classes))
    for i, h in enumerate(heads):
        vals = [100 * (stats[h]["per_class_IoU_mean"].get(c) or 0) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=h)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title("per-class IoU (mean over seeds)")
    ax.legend(fontsize="small")
    for ax, key, label, lower in (
        (axes[1, 0], "gflops", "GFLOPs per image at the training crop", True),
        (axes[1, 1], "train_img_s", "train images/s", False),
        (axes[1, 2], "eval_img_s", "eval images/s", False),
    ):
        xs = [stats[h][key] for h in heads]
        ys = [100 * stats[h]["mIoU_mean"] for h in heads]
        es = [100 * (stats[h]["mIoU_std"] or 0) for h in heads]
        for h, xv, yv, ev in zip(heads, xs, ys, es):
            if xv is not None:
                ax.errorbar([xv], [yv], yerr=[ev], fmt="o", capsize=4)
                ax.annotate(h, (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize="small")
        front = _pareto(xs, ys, lower)
        if len(front) > 1:
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:gray", label="Pareto front")
            ax.legend(fontsize="small")
        ax.set_xlabel(label + (" (lower is cheaper)" if lower else " (higher is cheaper)"))
        ax.set_ylabel("mIoU (%)")
        ax.set_title("mIoU (mean ± std) against cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(
    run_dirs: Sequence[str | Path],
    out: str | Path = ".",
    baseline: str = "fcn",
    samples: int = 2000,
    confidence: float = 0.95,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Load (and evaluate where needed) the runs, write compare.md/.png/.json into ``out``; returns the json."""
    runs = [load_run(d, evaluate) for d in run_dirs]
    result = summarize(runs, baseline, samples, confidence)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown(result))
    plot(result, out / "compare.png")
    return result


# -- training ------------------------------------------------------------------------------------------------
def _run_child(cmd: list[str], env: dict[str, str]) -> float:
    """Run a command; its peak RSS in MiB (Linux ``wait4``: the process and the children it waited for)."""
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return usage.ru_maxrss / 1024  # KiB -> MiB


def head_overrides(head: str, config: str) -> list[str]:
    """The train.py overrides an smp architecture needs on a config written for the native heads: its own
    arguments instead of the config's ``head_kwargs`` (smp defaults), no aux head, and the config's output stride
    if the architecture supports it, else its own default (Unet & co. decode from the undilated encoder: 32).
    Nothing for native heads. Overrides after ``--`` come later on the command line, so they still win."""
    if not is_smp_head(head):
        return []
    import yaml

    model = (yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}
    stride = model.get("output_stride", 8)
    stride = stride if stride in supported_output_strides(head) else default_output_stride(head)
    return ["--model.head_kwargs={}", "--model.aux=false", f"--model.output_stride={stride}"]


def train_runs(config: str, heads: list[str], seeds: list[int], out: Path, extra: list[str], group: str) -> list[Path]:
    """One train.py run per head x seed (same config and budget; ``out/<head>-s<seed>``, ``smp:Unet`` as
    ``smp-Unet``), in W&B group ``group``; existing finished runs (a ``last.ckpt`` and ``summary.json``) are kept,
    not retrained. smp architectures get :func:`head_overrides`."""
    env = {**os.environ, "WANDB_RUN_GROUP": group}
    runs = []
    for seed in seeds:  # seed-major: an interrupted comparison still has every head for the first seeds
        for head in heads:
            run_dir = out / f"{head.replace(':', '-')}-s{seed}"
            if (
                (run_dir / "checkpoints" / "last.ckpt").is_file()
                and (run_dir / "summary.json").is_file()
                and (run_dir / "compare_train.json").is_file()
            ):
                print(f"{run_dir}: already trained, kept", flush=True)
            else:
                cmd = [
                    sys.executable,
                    str(ROOT / "train.py"),
                    "--config",
                    config,
                    f"--model.head={head}",
                    *head_overrides(head, config),
                    f"--seed_everything={seed}",
                    f"--trainer.default_root_dir={run_dir}",
                    *extra,
                ]
                t0 = time.perf_counter()
                rss = _run_child(cmd, env)
                (run_dir / "compare_train.json").write_text(
                    json.dumps({"peak_rss_mb": rss, "wall_s": time.perf_counter() - t0, "command": cmd}, indent=2)
                )
            runs.append(run_dir)
    return runs


def log_wandb_summary(result: dict[str, Any], out: Path, group: str, project: str, mode: str) -> None:
    """The comparison's summary table and chart, logged once as run ``<group>/summary`` of W&B group ``group``."""
    from seg.training.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)  # type: ignore[arg-type]
    if mode == "off":
        return
    import wandb

    cols = [
        "head",
        "n",
        "mIoU_mean",
        "mIoU_std",
        "diff_vs_baseline",
        "ci_low",
        "ci_high",
        "verdict",
        "params",
        "gflops",
        "train_img_s",
        "eval_img_s",
        "peak_mem_mb",
    ]
    rows = []
    for h, s in result["heads"].items():
        d = s["vs_baseline"] or {}
        rows.append(
            [
                h,
                s["n"],
                s["mIoU_mean"],
                s["mIoU_std"],
                d.get("diff"),
                d.get("ci_low"),
                d.get("ci_high"),
                d.get("verdict"),
                s["params"],
                s["gflops"],
                s["train_img_s"],
                s["eval_img_s"],
                s["peak_mem_mb"],
            ]
        )
    run = wandb.init(
        project=project,
        group=group,
        name=f"{group}/summary",
        job_type="compare",
        dir=str(out),
        mode=mode,
        config={"baseline": result["baseline"], **result["bootstrap"]},
    )
    try:
        run.log(
            {
                "compare/table": wandb.Table(columns=cols, data=rows),
                "compare/chart": wandb.Image(str(out / "compare.png")),
            }
        )
    finally:
        run.finish()


def _wandb_arg(extra: list[str]) -> tuple[str, str]:
    mode, project = "auto", "seg"
    for i, a in enumerate(extra):
        for flag in ("--wandb", "--wandb_project"):
            val = (
                a.split("=", 1)[1]
                if a.startswith(flag + "=")
                else (extra[i + 1] if a == flag and i + 1 < len(extra) else None)
            )
            if val is not None:
                mode, project = (val, project) if flag == "--wandb" else (mode, val)
    return mode, project


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m seg.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="*", help="train.py run directories to compare")
    p.add_argument("--out", default=None, help="output folder (default: . or runs/compare with --train)")
    p.add_argument("--train", action="store_true", help="train one run per --heads x --seeds first")
    p.add_argument("--config", help="train.py config for --train")
    p.add_argument(
        "--heads",
        nargs="+",
        choices=all_head_names(),
        default=["fcn", "ccnet", "danet", "nonlocal", "axial"],
        metavar="HEAD",
        help="heads to train with --train (default: fcn ccnet danet nonlocal axial; "
        f"any of {' '.join(all_head_names())}; smp architectures train with their own defaults)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per head with --train: 0 .. N-1 (default 3)")
    p.add_argument("--baseline", default="fcn", help="head the others are compared to (default fcn)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--group", default=None, help="W&B group of the runs (default: <out folder>-<timestamp>)")
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="fail instead of evaluating runs that lack per_image.npz",
    )
    args, unknown = p.parse_known_args(argv)
    extra = unknown + extra  # e.g. --trainer.max_steps=300 goes to every train.py
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not 0 < args.confidence < 1:
        p.error("--confidence must be in (0, 1)")
    runs: list[Path] = [Path(r) for r in args.runs]
    out = Path(args.out or ("runs/compare" if args.train else "."))
    mode, project = _wandb_arg(extra)
    group = args.group or f"{out.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.train:
        if not args.config:
            p.error("--train needs --config")
        if args.baseline not in args.heads:
            p.error(f"--baseline {args.baseline} is not in --heads {args.heads}")
        runs += train_runs(args.config, args.heads, list(range(args.seeds)), out, extra, group)
    elif extra:
        p.error(f"unknown arguments {extra} (overrides are only for --train)")
    if not runs:
        p.error("give run directories, or --train --config C --heads ...")
    result = compare(runs, out, args.baseline, args.bootstrap, args.confidence, args.evaluate)
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'} and {out / 'compare.json'}")
    if args.train:
        log_wandb_summary(result, out, group, project, mode)
    return result


if __name__ == "__main__":
    main()
