"""``python -m seg.compare``: the command line, and :func:`compare` (runs in, report files out)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from seg.command_line import ArgParser
from seg.io import write_json
from seg.models import all_head_names

from .chart import plot
from .report import log_wandb_summary, markdown
from .runs import ROOT, RunFailed, load_run, train_runs
from .stats import summarize

__all__ = ["build_parser", "compare", "main"]


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
    result["provenance"] = provenance(result["runs"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "compare.json")
    (out / "compare.md").write_text(markdown(result))
    plot(result, out / "compare.png")
    return result


def _git_commit() -> Optional[str]:
    """seg's commit (``-dirty`` with uncommitted changes) when it runs from a git checkout, else None (an installed
    seg: no ``.git`` beside the package, so an enclosing repository's commit is never reported as seg's)."""
    if not (ROOT / ".git").exists():  # a directory, or a file in a git worktree
        return None
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], capture_output=True, timeout=10).returncode != 0
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """compare.json's ``provenance``: what the runs share (a list where they differ, None where unknown), the
    machine seg.compare ran on (it trained the runs with ``--train`` and ran any evaluation pass), the date and
    seg's commit; ``missing`` names the fields nobody recorded."""
    import torch

    def shared(key: str) -> Any:
        vals = list(dict.fromkeys(r.get(key) for r in runs if r.get(key) is not None))
        return None if not vals else vals[0] if len(vals) == 1 else vals

    out = {
        k: shared(k)
        for k in ("backbone", "output_stride", "steps", "max_steps", "dataset", "data_root", "num_images")
        + ("train_device", "eval_device")
    }
    out["seeds"] = sorted({r["seed"] for r in runs if r.get("seed") is not None})
    out["machine"] = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    out["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out["seg_commit"] = _git_commit()
    out["missing"] = sorted(k for k, v in out.items() if v is None or v == [])
    return out


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


def build_parser() -> ArgParser:
    """The command line (its own options; the rest goes to every train.py)."""
    package_doc = sys.modules[__package__].__doc__  # the package docstring (its parent is always imported first)
    p = ArgParser(
        prog="python -m seg.compare",
        description="\n\n".join(package_doc.split("\n\n")[:5]),  # what it does, and its two forms
        epilog="python -m seg.compare --help_all: the method (evaluation pass, interval, cost, W&B) and the heads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        reference=f"{package_doc}\nHeads (--heads): {' '.join(all_head_names())}",
    )
    p.add_argument("runs", nargs="*", help="train.py run directories to compare")
    p.add_argument("--out", default=None, help="output folder (default: . or runs/compare with --train)")
    p.add_argument("--train", action="store_true", help="train one run per --heads x --seeds first")
    p.add_argument("--config", help="train.py config for --train")
    p.add_argument(
        "--heads",
        nargs="+",
        choices=all_head_names(),
        default=["fcn", "psp", "danet", "nonlocal", "ccnet", "axial"],
        metavar="HEAD",
        help="heads to train with --train (default: fcn psp danet nonlocal ccnet axial; any of seg's heads and "
        "smp:<Architecture>, listed by --help_all)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per head with --train (default 3)")
    p.add_argument(
        "--first_seed",
        type=int,
        default=0,
        help="with --train, the seeds are first_seed .. first_seed + seeds - 1 (default 0); another first seed "
        "gives an independent replication of a comparison",
    )
    p.add_argument("--baseline", default="fcn", help="head the others are compared to (default fcn)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--group", default=None, help="W&B group of the runs (default: <out folder>-<timestamp>)")
    p.add_argument(
        "--no_evaluate",
        dest="evaluate",
        action="store_false",
        help="fail instead of evaluating runs that lack per_image.npz",
    )
    return p


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = build_parser()
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
        try:
            runs += train_runs(
                args.config, args.heads, list(range(args.first_seed, args.first_seed + args.seeds)), out, extra, group
            )
        except RunFailed as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.code) from None
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
