"""Compare runs: ``python -m seg.compare RUN_DIR... [--out DIR]`` -> ``DIR/compare.md`` (Markdown table: mIoU,
aAcc, mAcc, per-class IoU, parameters, throughput) and ``DIR/compare.png`` (mIoU and per-class IoU bars).

Train several heads on the same data and budget, then compare (every run gets the same config, seed and
steps; only ``model.head`` differs; extra arguments are passed to every ``train.py``)::

    python -m seg.compare --train --config configs/quickstart.yaml --heads fcn ccnet danet nonlocal axial \
        [--out runs/compare] [--evaluate] [-- --trainer.max_steps=300 ...]

A run's numbers come from ``<run>/metrics.json`` (``seg.evaluate``) when present, else from the final
validation in ``<run>/summary.json`` (written during training).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from seg.models import HEADS

ROOT = Path(__file__).resolve().parent.parent


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One row: name, head, backbone, params, throughput and metrics of a run directory."""
    run_dir = Path(run_dir)
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.json"
    if not summary_path.is_file() and not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json or metrics.json (is it a train.py run dir?)")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    source = metrics if metrics is not None else summary.get("last") or {}
    return {
        "run": run_dir.name,
        "head": (metrics or summary).get("head"),
        "backbone": (metrics or summary).get("backbone"),
        "params": (metrics or summary).get("params"),
        "steps": summary.get("global_step"),
        "train_img_s": summary.get("train_images_per_s"),
        "eval_img_s": metrics.get("images_per_s") if metrics else None,
        "mIoU": source.get("mIoU"), "aAcc": source.get("aAcc"), "mAcc": source.get("mAcc"),
        "best_mIoU": (summary.get("best") or {}).get("mIoU"),
        "per_class_IoU": source.get("per_class_IoU") or {},
        "source": "metrics.json" if metrics is not None else "summary.json (last val)",
    }


def _fmt(v: Any, pct: bool = False, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    classes = list(dict.fromkeys(c for r in rows for c in r["per_class_IoU"]))
    head = ["run", "head", "backbone", "params (M)", "steps", "train img/s", "eval img/s", "mIoU", "aAcc",
            "mAcc"] + [f"IoU {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in sorted(rows, key=lambda r: -(r["mIoU"] if r["mIoU"] is not None else -1)):
        cells = [r["run"], str(r["head"]), str(r["backbone"]),
                 _fmt(r["params"] / 1e6 if r["params"] else None, digits=2), str(r["steps"] or "-"),
                 _fmt(r["train_img_s"]), _fmt(r["eval_img_s"]), _fmt(r["mIoU"], True), _fmt(r["aAcc"], True),
                 _fmt(r["mAcc"], True)] + [_fmt(r["per_class_IoU"].get(c), True) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("IoU/accuracy in %; numbers from " + ", ".join(sorted({r["source"] for r in rows})) + ".")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = list(dict.fromkeys(c for r in rows for c in r["per_class_IoU"]))
    fig, axes = plt.subplots(1, 2, figsize=(6 + 0.6 * len(classes) * max(1, len(rows)) / 2, 4),
                             gridspec_kw={"width_ratios": [1, max(2, len(classes) / 2)]})
    names = [r["run"] for r in rows]
    axes[0].bar(names, [100 * (r["mIoU"] or 0) for r in rows], color="tab:blue")
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_title("mIoU")
    axes[0].tick_params(axis="x", rotation=45)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(classes))
    for i, r in enumerate(rows):
        vals = [100 * (r["per_class_IoU"].get(c) or 0) for c in classes]
        axes[1].bar(x + i * width - 0.4 + width / 2, vals, width, label=r["run"])
    axes[1].set_xticks(x, classes, rotation=45, ha="right")
    axes[1].set_ylabel("IoU (%)")
    axes[1].set_title("per-class IoU")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(run_dirs: list[str | Path], out: str | Path = ".") -> tuple[Path, Path]:
    rows = [load_run(d) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "compare.md", out / "compare.png"
    md.write_text(markdown_table(rows))
    plot(rows, png)
    return md, png


def train_heads(config: str, heads: list[str], out: Path, extra: list[str], evaluate: bool) -> list[Path]:
    """Runs train.py once per head (same config, seed and budget), optionally seg.evaluate on last.ckpt."""
    runs = []
    for head in heads:
        run_dir = out / head
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, f"--model.head={head}",
               f"--trainer.default_root_dir={run_dir}", *extra]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        if evaluate:
            cmd = [sys.executable, "-m", "seg.evaluate", "--config", str(run_dir / "config.yaml"),
                   "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--output", str(run_dir / "metrics.json")]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        runs.append(run_dir)
    return runs


def main(argv: Optional[list[str]] = None) -> tuple[Path, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m seg.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run directories to compare")
    p.add_argument("--out", default=None, help="output folder (default: . or runs/compare with --train)")
    p.add_argument("--train", action="store_true", help="train one run per --heads first")
    p.add_argument("--config", help="train.py config for --train")
    p.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=list(HEADS),
                   help="heads to train with --train (default: every registered head)")
    p.add_argument("--evaluate", action="store_true", help="with --train: also run seg.evaluate on last.ckpt")
    args, unknown = p.parse_known_args(argv)
    extra = unknown + extra  # e.g. --trainer.max_steps=300 goes to every train.py
    runs: list[Path] = [Path(r) for r in args.runs]
    if args.train:
        if not args.config:
            p.error("--train needs --config")
        out = Path(args.out or "runs/compare")
        runs += train_heads(args.config, args.heads, out, extra, args.evaluate)
    elif extra:
        p.error(f"unknown arguments {extra} (overrides are only for --train)")
    if not runs:
        p.error("give run directories, or --train --config C --heads ...")
    md, png = compare(runs, args.out or ("runs/compare" if args.train else "."))
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return md, png


if __name__ == "__main__":
    main()
