"""The report of a comparison: ``compare.md`` (tables), ``compare.png`` (mIoU per head and seed, the difference to
the baseline with its interval, per-class IoU, mIoU against each cost with the Pareto front) and the W&B summary
run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["log_wandb_summary", "markdown", "plot"]


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


def log_wandb_summary(result: dict[str, Any], out: Path, group: str, project: str, mode: str) -> None:
    """The comparison's summary table and chart, logged once as run ``<group>/summary`` of W&B group ``group``;
    with each run's ECE and its report's confusion and reliability charts (``report/<run>/...``)."""
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
    logged = {
        "compare/table": wandb.Table(columns=cols, data=rows),
        "compare/chart": wandb.Image(str(out / "compare.png")),
        "compare/runs": wandb.Table(
            columns=["run", "head", "seed", "mIoU", "ECE"],
            data=[[r["name"], r["head"], r["seed"], r["mIoU"], r.get("ECE")] for r in result["runs"]],
        ),
    }
    for r in result["runs"]:
        folder = Path(r["report"]).parent if r.get("report") else None
        for chart in ("confusion", "reliability"):
            if folder is not None and (folder / f"{chart}.png").is_file():
                logged[f"report/{r['name']}/{chart}"] = wandb.Image(str(folder / f"{chart}.png"))
    try:
        run.log(logged)
    finally:
        run.finish()
