"""The report of a comparison: ``compare.md`` (what was compared on what, then the tables) and the W&B summary run;
``compare.png`` is :mod:`seg.compare.chart`'s."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["log_wandb_summary", "markdown", "provenance_lines"]


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{scale * v:.{digits}f}"


def _steps(p: dict[str, Any]) -> str:
    steps = p.get("steps")
    if steps is None:
        return "training steps unknown"
    return f"{steps} training steps" if not isinstance(steps, list) else f"training steps {steps} (differ!)"


def provenance_lines(result: dict[str, Any]) -> list[str]:
    """What was compared, on what, when: the title lines of compare.png and the header of compare.md."""
    p = result.get("provenance") or {}
    runs = result["runs"]
    base = result.get("baseline")
    heads = ([base] if base else []) + [h for h in result["heads"] if h != base]
    seeds = p.get("seeds") or sorted({r["seed"] for r in runs if r.get("seed") is not None})
    n = sorted({s["n"] for s in result["heads"].values()})
    n_txt = f"{n[0]} seed{'s' if n[0] > 1 else ''} each" if len(n) == 1 else f"{'/'.join(map(str, n))} seeds"
    first = f"{len(heads)} heads × {n_txt}" + (f", baseline {base}" if base else "") + f": {', '.join(heads)}"
    backbone = p.get("backbone") or runs[0].get("backbone") or "backbone unknown"
    os_ = p.get("output_stride")
    data = p.get("data_root") or "data unknown"
    if p.get("dataset"):
        data += f" ({p['dataset']})"
    second = (
        f"{backbone}"
        + (f", output stride {os_}" if os_ else "")
        + f" · {_steps(p)} · seeds {', '.join(map(str, seeds))} · {data}, {runs[0]['num_images']} val images"
    )
    m = p.get("machine") or {}
    dev = p.get("train_device")
    if dev == "cuda":
        where = f"trained on GPU ({m.get('gpu') or 'name unknown'})"
    elif dev == "cpu":
        where = f"trained on CPU ({m.get('cpu') or 'name unknown'}, {m.get('cpu_count') or '?'} cores)"
    else:
        where = "training device unknown"
    third = " · ".join(
        [
            where,
            p["date"][:10] if p.get("date") else "date unknown",
            f"seg {p['seg_commit']}" if p.get("seg_commit") else "seg commit unknown",
        ]
    )
    return [first, second, third]


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
    lines = [f"{line}  " for line in provenance_lines(result)]  # two spaces: a Markdown line break
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
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
