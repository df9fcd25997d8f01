"""``compare.png``: one two-column figure (7.2 in wide) of a comparison, read from ``compare.json``'s content.

Panels: mIoU per seed with mean ± seed std; the difference to the baseline with its bootstrap interval and the
verdict; per-class IoU ± seed std; peak memory of training; every cost as a ratio to the baseline on axes that
start at 0 (a 0.6 % difference looks like one); mIoU against GFLOPs with the Pareto front. One colour per head
everywhere (fixed by the sorted head names); the baseline is hatched / dashed. Throughputs measured on a CPU are
drawn hollow and marked "CPU, noisy": on a shared CPU their run-to-run noise is as large as the differences
between heads, so they never decide a Pareto front (GFLOPs, which do not depend on the machine, do).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .report import provenance_lines

__all__ = ["figure", "head_colors", "plot"]

WIDTH_IN = 7.2  # two columns: six panels of up to a dozen heads do not fit one 3.5 in column at >= 7 pt
DPI = 200  # 1440 px wide; shown 900 px wide (a README) the 7 pt text is 12 px high
MAX_CLASSES = 12  # per-class panel: beyond this, the classes whose IoU differs most between heads
PARETO_TOL = 0.02  # GFLOPs within 2 % count as the same cost on the Pareto front
VERDICT_COLORS = {"better": "#1a7f37", "worse": "#cf222e", "within noise": "#57606a", "baseline": "black"}


def head_colors(heads: list[str]) -> dict[str, Any]:
    """One colour per head, fixed by the sorted head names (the same in every panel and in the legend)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(heads) <= 10 else "tab20"]
    return {h: cmap(i % cmap.N) for i, h in enumerate(sorted(heads))}


def _by_head(result: dict[str, Any], key: str, transform: Any = None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {h: [] for h in result["heads"]}
    for r in result["runs"]:
        v = r.get(key)
        if v is not None:
            out[r["head"]].append(transform(v) if transform else v)
    return out


def _mean_std(vals: list[float]) -> tuple[Optional[float], float]:
    if not vals:
        return None, 0.0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _noisy(result: dict[str, Any], key: str) -> bool:
    """Throughput ``key`` measured on a CPU (or on an unknown device) in any run."""
    kind_device = {"cuda": "cuda", "rss": "cpu"}  # runs from before train_device: the kind of peak memory
    if key == "train_img_s":
        devs = {r.get("train_device") or kind_device.get(r.get("peak_mem_kind") or "") for r in result["runs"]}
    else:
        devs = {r.get("eval_device") for r in result["runs"]}
    return devs != {"cuda"}


def cost_ratios(result: dict[str, Any], base: str) -> dict[str, dict[str, tuple[Optional[float], float]]]:
    """Per cost, per head: (mean, seed std) of the cost relative to head ``base``'s mean (throughputs as time per
    image, so every ratio reads "lower is cheaper"); None where the cost is unknown."""
    out = {}
    for key, label, inv in (
        ("params", "params", False),
        ("gflops", "GFLOPs", False),
        ("train_img_s", "train s/img", True),
        ("eval_img_s", "eval s/img", True),
        ("peak_mem_mb", "peak memory", False),
    ):
        vals = _by_head(result, key, (lambda v: 1.0 / v if v else None) if inv else None)
        vals = {h: [v for v in vs if v is not None] for h, vs in vals.items()}
        ref = _mean_std(vals[base])[0]
        out[label] = {
            h: ((m / ref, s / ref) if m is not None and ref else (None, 0.0))
            for h, (m, s) in ((h, _mean_std(vs)) for h, vs in vals.items())
        }
    return out


def _pareto(xs: list[Optional[float]], ys: list[float], tol: float = PARETO_TOL) -> list[int]:
    """Indices of the points no other point beats, sorted by cost: beaten = another point has a higher mIoU at a
    cost at most ``tol`` (relative) above, or the same mIoU at a lower cost."""
    pts = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None]
    front = [
        i
        for cx, cy, i in pts
        if not any((ox <= cx * (1 + tol) and oy > cy) or (ox < cx and oy == cy) for ox, oy, _ in pts)
    ]
    return sorted(front, key=lambda i: xs[i])  # type: ignore[arg-type, return-value]


def _classes(result: dict[str, Any], order: list[str]) -> tuple[list[str], str]:
    stats = result["heads"]
    classes = list(dict.fromkeys(c for h in order for c in stats[h]["per_class_IoU_mean"]))
    if len(classes) <= MAX_CLASSES:
        return classes, f"per-class IoU, mean ± seed std ({len(classes)} classes)"

    def spread(c: str) -> float:
        v = [stats[h]["per_class_IoU_mean"].get(c) for h in order]
        v = [x for x in v if x is not None]
        return max(v) - min(v) if v else -1.0

    keep = set(sorted(classes, key=spread, reverse=True)[:MAX_CLASSES])
    return [c for c in classes if c in keep], f"per-class IoU ± seed std: {MAX_CLASSES} of {len(classes)} classes"


def figure(result: dict[str, Any]) -> Any:
    """The comparison chart as a matplotlib Figure (not saved; :func:`plot` saves it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    stats, base = result["heads"], result["baseline"]
    others = sorted((h for h in stats if h != base), key=lambda h: -stats[h]["mIoU_mean"])
    order = ([base] if base else []) + others  # top to bottom in the per-head panels
    colors = head_colors(list(stats))
    rows = {h: len(order) - 1 - i for i, h in enumerate(order)}  # y positions: first head on top
    ylim = (-0.6, len(order) - 0.4)
    style = {"font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "legend.fontsize": 7}
    style.update({"xtick.labelsize": 7, "ytick.labelsize": 7, "hatch.linewidth": 0.6})
    with plt.rc_context(style):
        fig = plt.figure(figsize=(WIDTH_IN, 8.6), layout="constrained")
        axes = fig.subplot_mosaic([["miou", "delta"], ["cls", "mem"], ["cost", "pareto"]])
        title = "\n".join(textwrap.fill(line, 120, subsequent_indent="  ") for line in provenance_lines(result))
        fig.suptitle(title, fontsize=7.5, x=0.01, ha="left", linespacing=1.4)  # 120 characters fit 7.2 in

        def head_axis(ax: Any) -> None:
            ax.set_yticks([rows[h] for h in order], [h + (" (base)" if h == base else "") for h in order])
            for lab, h in zip(ax.get_yticklabels(), order):
                lab.set_color(colors[h])
            ax.set_ylim(*ylim)
            ax.grid(axis="x", lw=0.4, alpha=0.5)

        ax = axes["miou"]  # mIoU per seed and mean ± std
        for h in order:
            seeds = [100 * r["mIoU"] for r in result["runs"] if r["head"] == h]
            ax.scatter(seeds, [rows[h]] * len(seeds), s=10, color=colors[h], alpha=0.45, lw=0, zorder=3, label=h)
            std = stats[h]["mIoU_std"]
            ax.errorbar(
                [100 * stats[h]["mIoU_mean"]],
                [rows[h]],
                xerr=None if std is None else [100 * std],
                fmt="D",
                ms=4,
                color=colors[h],
                mec="black",
                mew=0.5,
                capsize=3,
                zorder=4,
                label=h,
            )
        if base:
            ref = ax.axvline(100 * stats[base]["mIoU_mean"], color="black", ls="--", lw=0.8, label=f"{base} mean")
            ax.legend(handles=[ref], loc="best", handlelength=1.6)
        head_axis(ax)
        ax.set_xlabel("mIoU (%)")
        ax.set_title("mIoU: seeds (dots), mean ± seed std")

        ax = axes["delta"]  # difference to the baseline with the bootstrap interval, verdict in its own column
        conf = int(round(100 * result["bootstrap"]["confidence"]))
        deltas = {h: stats[h]["vs_baseline"] for h in order if stats[h]["vs_baseline"]}
        lo = min([0.0] + [100 * d["ci_low"] for d in deltas.values()])
        hi = max([0.0] + [100 * d["ci_high"] for d in deltas.values()])
        span = max(hi - lo, 0.5)
        ax.set_xlim(lo - 0.06 * span, hi + 0.55 * span)  # the right third holds the verdicts
        ax.axvline(0, color="black", lw=0.8, ls="--")
        for h, d in deltas.items():
            y, v = 100 * d["diff"], d["verdict"]
            if h != base:
                err = [[y - 100 * d["ci_low"]], [100 * d["ci_high"] - y]]
                ax.errorbar(
                    [y], [rows[h]], xerr=err, fmt="o", ms=4, color=colors[h], mec="k", mew=0.5, capsize=3, label=h
                )
            ax.text(0.98, rows[h], v, transform=ax.get_yaxis_transform(), ha="right", va="center")
            ax.texts[-1].set(color=VERDICT_COLORS[v], fontweight="bold" if v in ("better", "worse") else "normal")
        head_axis(ax)
        ax.set_xlabel(f"Δ mIoU vs {base} (points), {conf}% paired-bootstrap interval" if base else "")
        ax.set_title("difference to the baseline and verdict")

        ax = axes["cls"]  # per-class IoU ± seed std, baseline hatched
        classes, title = _classes(result, order)
        width = 0.84 / max(1, len(order))
        x = np.arange(len(classes))
        for i, h in enumerate(order):
            per_run = [r["per_class_IoU"] for r in result["runs"] if r["head"] == h]
            ms = [_mean_std([100 * p[c] for p in per_run if p.get(c) is not None]) for c in classes]
            ax.bar(
                x - 0.42 + (i + 0.5) * width,
                [m or 0 for m, _ in ms],
                width,
                yerr=[s for _, s in ms],
                color=colors[h],
                edgecolor="black" if h == base else "none",
                hatch="////" if h == base else None,
                lw=0.5,
                error_kw={"elinewidth": 0.6, "capsize": 1.2},
                label=h,
            )
        ax.set_xticks(x, classes, rotation=30 if max(map(len, classes), default=0) > 6 else 0, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("IoU (%)")
        ax.set_title(title)

        ax = axes["mem"]  # peak memory of training, zero-based
        kinds = {r.get("peak_mem_kind") for r in result["runs"]} - {None}
        mem = {h: _mean_std(v) for h, v in _by_head(result, "peak_mem_mb").items()}
        for h in order:
            m, s = mem[h]
            if m is not None:
                edge, hatch = ("black", "////") if h == base else ("none", None)
                kw = {"error_kw": {"elinewidth": 0.6, "capsize": 1.2}, "label": h, "lw": 0.5}
                ax.barh(rows[h], m, 0.6, xerr=s, color=colors[h], edgecolor=edge, hatch=hatch, **kw)
        head_axis(ax)
        ax.set_xlim(0, 1.12 * max([m + s for m, s in mem.values() if m is not None], default=1.0))
        what = {"cuda": "CUDA max allocated", "rss": "peak RSS, process + workers"}
        ax.set_xlabel("MiB (" + (" / ".join(what[k] for k in sorted(kinds)) if kinds else "unknown") + ")")
        ax.set_title("peak memory of training, mean ± seed std")

        ax = axes["cost"]  # every cost relative to the baseline, from 0
        ref_head = base or order[0]  # without a baseline, costs relative to the first head
        ratios = cost_ratios(result, ref_head)
        noisy = [label.endswith("s/img") and _noisy(result, f"{label[:5]}_img_s") for label in ratios]
        labels = [lab.replace(" ", "\n") + ("\n(CPU,\nnoisy)" if n else "") for lab, n in zip(ratios, noisy)]
        for i, h in enumerate(order):  # one bar per cost; hollow where the cost is a CPU throughput
            known = [(j, *per[h], n) for j, (per, n) in enumerate(zip(ratios.values(), noisy)) if per[h][0] is not None]
            ax.bar(
                [j - 0.42 + (i + 0.5) * width for j, *_ in known],
                [m for _, m, _, _ in known],
                width,
                yerr=[s for _, _, s, _ in known],
                color=["none" if n else colors[h] for *_, n in known],
                edgecolor=[colors[h] if n else ("black" if h == base else "none") for *_, n in known],
                hatch="////" if h == base else None,
                lw=[0.8 if n else 0.5 for *_, n in known],
                error_kw={"elinewidth": 0.6, "capsize": 1.2},
                label=h,
            )
        ax.axhline(1, color="black", ls="--", lw=0.8)
        ax.set_xticks(range(len(labels)), labels)
        top = max([m + s for per in ratios.values() for m, s in per.values() if m is not None], default=1.0)
        ax.set_ylim(0, max(1.25, 1.1 * top))
        ax.set_ylabel(f"cost ÷ {ref_head} (1 = same; lower is cheaper)")
        ax.set_title(f"cost relative to {ref_head}, mean ± seed std")

        ax = axes["pareto"]  # mIoU against GFLOPs (machine-independent), ratio axis from 0
        g = ratios.get("GFLOPs", {})
        xs = [g.get(h, (None, 0))[0] for h in order]
        ys = [100 * stats[h]["mIoU_mean"] for h in order]
        for h, xv, yv in zip(order, xs, ys):
            if xv is not None:
                e = 100 * (stats[h]["mIoU_std"] or 0)
                ax.errorbar(
                    [xv], [yv], yerr=[e], fmt="o", ms=4.5, color=colors[h], mec="k", mew=0.5, capsize=3, label=h
                )
        front = _pareto(xs, ys)
        if front:  # ringed, joined when several: GFLOPs within PARETO_TOL count as the same cost
            fx, fy = [xs[i] for i in front], [ys[i] for i in front]
            (line,) = ax.plot(fx, fy, ":o", color="black", lw=0.9, ms=9, mfc="none", mew=0.8, label="Pareto front")
            ax.legend(handles=[line], loc="upper left", handlelength=2.2)
        ax.set_xlim(0, max(1.25, 1.1 * max([x for x in xs if x is not None], default=1.0)))
        ax.axvline(1, color="black", ls="--", lw=0.8)
        ax.set_xlabel(f"GFLOPs ÷ {ref_head} (axis from 0; within {PARETO_TOL:.0%} = same cost)")
        ax.set_ylabel("mIoU (%)")
        ax.set_title("mIoU (mean ± seed std) against GFLOPs")
        ax.grid(lw=0.4, alpha=0.5)

        for key, what, empty in (
            ("delta", "no baseline among the heads", not base),
            ("mem", "peak memory not recorded", not axes["mem"].containers),
            ("pareto", "GFLOPs not recorded", not axes["pareto"].containers),
        ):
            if empty:
                axes[key].text(0.5, 0.5, what, transform=axes[key].transAxes, ha="center", va="center")
        handles = [Patch(color=colors[h], label=h) for h in sorted(stats)]
        if base:
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label=f"baseline ({base})"))
        if any(_noisy(result, k) for k in ("train_img_s", "eval_img_s")):
            handles.append(Patch(facecolor="none", edgecolor="grey", label="hollow: CPU throughput, noisy"))
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False)
    return fig


def plot(result: dict[str, Any], path: Path) -> None:
    """Save :func:`figure` as ``path`` (PNG, 1440 px wide)."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
