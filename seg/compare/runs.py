"""The runs of a comparison: training them (one ``train.py`` process per head x seed), their evaluation pass
(``seg.evaluate``'s own function, per-image counts kept), and loading a finished run for the statistics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from seg.io import write_json

__all__ = ["RunFailed", "evaluate_run", "head_overrides", "load_run", "train_runs"]

ROOT = Path(__file__).resolve().parents[2]


def _gflops(model: Any, crop: Sequence[int], device: Any) -> float:
    """GFLOPs of one eval-mode forward pass of one (3, H, W) image, counted as seg.bench counts them."""
    from seg.bench.flops import forward_flops

    return forward_flops(model, (1, 3, int(crop[0]), int(crop[1])), device) / 1e9


def evaluate_run(run_dir: str | Path, ckpt: str = "last.ckpt", device: Optional[str] = None) -> dict[str, Any]:
    """The evaluation pass of one run (see the package docstring): ``seg.evaluate``'s
    :func:`~seg.evaluate.evaluate_checkpoint` on ``<run>/checkpoints/<ckpt>`` with the checkpoint's data and
    inference settings; writes ``per_image.npz`` and ``eval.json`` (what :func:`load_run` reads) and the run's
    ``report/`` (:mod:`seg.report`: report.html, confusion, per-class intervals, worst images, calibration)."""
    import torch

    from seg.evaluate import evaluate_checkpoint
    from seg.loading import load_model

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / ckpt
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no checkpoint to evaluate (did the run start?)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trainer = {"accelerator": "gpu" if dev.type == "cuda" else "cpu", "devices": 1, "enable_progress_bar": False}
    model, info = load_model(ckpt_path)
    result, scores = evaluate_checkpoint(
        ckpt_path, data={**info.data, "num_workers": 0}, trainer=trainer, report=run_dir / "report"
    )
    np.savez_compressed(
        run_dir / "per_image.npz",
        counts=scores.counts,
        paths=np.array(scores.paths),
        classes=np.array(list(result["per_class_IoU"])),
    )
    crop = list(info.data.get("crop_size") or info.eval["crop_size"])
    ev = {
        "ckpt": str(ckpt_path),
        "step": info.step,
        "seed": info.seed,
        "head": info.head,
        "backbone": info.backbone,
        "output_stride": info.build.get("output_stride"),
        "dataset": info.dataset,
        "data_root": info.data.get("root"),
        "mIoU": result["mIoU"],
        "ECE": result["ECE"],
        "report": result["report"],
        "num_images": result["num_images"],
        "images_per_s": result["images_per_s"],
        "eval_device": dev.type,
        "eval_device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "params": result["params"],
        "crop_size": crop,
        "gflops": _gflops(model, crop, dev),
    }
    write_json(ev, run_dir / "eval.json")
    return ev


def _run_seed(run_dir: Path, ev: dict[str, Any]) -> Optional[int]:
    """The run's seed: recorded in its checkpoint; for checkpoints written before that, ``seed_everything`` of its
    ``config.yaml`` (read with ``yaml.safe_load``), else a ``-s<N>`` suffix of the folder name."""
    if isinstance(ev.get("seed"), int):
        return ev["seed"]
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        seed = (yaml.safe_load(cfg.read_text()) or {}).get("seed_everything")
        if isinstance(seed, int):
            return seed
    m = re.search(r"-s(\d+)$", run_dir.name)
    return int(m.group(1)) if m else None


def load_run(run_dir: str | Path, evaluate: bool = True) -> dict[str, Any]:
    """One run: head, seed, mIoU and per-class IoU (from its per-image counts), costs; runs the evaluation pass
    first when ``per_image.npz`` / ``eval.json`` are missing and ``evaluate``. Needs only the run's
    ``checkpoints/last.ckpt``; ``summary.json`` and ``compare_train.json`` add training costs when present."""
    from seg.evaluation import miou_from_counts

    run_dir = Path(run_dir)
    if not (run_dir / "per_image.npz").is_file() or not (run_dir / "eval.json").is_file():
        if not evaluate:
            raise FileNotFoundError(f"{run_dir}: no per_image.npz / eval.json; run without --no_evaluate")
        evaluate_run(run_dir)
    ev = json.loads((run_dir / "eval.json").read_text())
    with np.load(run_dir / "per_image.npz") as z:
        counts, paths, classes = z["counts"], [str(p) for p in z["paths"]], [str(c) for c in z["classes"]]
    total = counts.sum(0)  # (3, C)
    union = total[1] + total[2] - total[0]
    iou = [float(t / u) if u > 0 else None for t, u in zip(total[0], union)]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    train_meta = (
        json.loads((run_dir / "compare_train.json").read_text()) if (run_dir / "compare_train.json").is_file() else {}
    )
    peak = summary.get("peak_cuda_memory_mb") or train_meta.get("peak_rss_mb")
    return {
        "run": str(run_dir),
        "name": run_dir.name,
        "head": ev["head"],
        "backbone": ev["backbone"],
        "output_stride": ev.get("output_stride"),  # eval.json of older runs lacks these provenance fields
        "dataset": ev.get("dataset"),
        "data_root": ev.get("data_root"),
        "seed": _run_seed(run_dir, ev),
        "steps": ev.get("step"),
        "max_steps": summary.get("max_steps"),
        "train_device": ("cuda" if summary.get("peak_cuda_memory_mb") else "cpu") if summary else None,
        "eval_device": ev.get("eval_device"),
        "eval_device_name": ev.get("eval_device_name"),
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
        "ECE": ev.get("ECE"),  # eval.json of runs evaluated before seg.report have none
        "report": ev.get("report"),
        "num_images": len(paths),
        "_counts": counts,
        "_paths": paths,
    }


class RunFailed(RuntimeError):
    """A train.py run of the comparison did not finish; ``code`` is its exit code (143: stopped by SIGTERM)."""

    def __init__(self, run_dir: Path, code: int) -> None:
        how = {143: "was stopped by SIGTERM", 130: "was stopped by Ctrl-C"}.get(code, f"failed (exit code {code})")
        super().__init__(
            f"the run {run_dir} {how}; its output above says why. Run the same seg.compare command again: finished "
            "runs are kept and an interrupted one continues from its last.ckpt"
        )
        self.code = code


def _run_child(cmd: list[str], env: dict[str, str], run_dir: Path) -> float:
    """Run a train.py command; its peak RSS in MiB (Linux ``wait4``: the process and the children it waited for).

    SIGTERM and SIGINT sent to this process are passed on to the run, so it saves ``last.ckpt`` and exits
    non-zero (``kill``/``docker stop`` reach only this process; a signal to the whole process group reaches the run
    twice, which it takes as one stop). A run that does not exit 0 raises :class:`RunFailed`."""
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # retried after a handled signal (PEP 475)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RunFailed(run_dir, proc.returncode if proc.returncode > 0 else 128 - proc.returncode)
    return usage.ru_maxrss / 1024  # KiB -> MiB


def head_overrides(head: str, config: str) -> list[str]:
    """The train.py overrides head ``head`` needs on a config written for the native heads
    (:func:`seg.models.registry.config_overrides`: an smp architecture takes its own defaults, no aux head, an
    output stride it supports). Overrides after ``--`` come later on the command line, so they still win."""
    import yaml

    from seg.models.registry import config_overrides

    model = (yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}
    overrides = config_overrides(head, int(model.get("output_stride", 8)))
    return [f"--model.{k}={json.dumps(v)}" for k, v in overrides.items()]


def train_runs(config: str, heads: list[str], seeds: list[int], out: Path, extra: list[str], group: str) -> list[Path]:
    """One train.py run per head x seed (same config and budget; ``out/<head>-s<seed>``, ``smp:Unet`` as
    ``smp-Unet``), in W&B group ``group``. A finished run (``compare_train.json`` written after train.py exited
    successfully) is kept; an interrupted one with a ``last.ckpt`` is resumed (``--ckpt_path last``)."""
    env = {**os.environ, "WANDB_RUN_GROUP": group}
    runs = []
    for seed in seeds:  # seed-major: an interrupted comparison still has every head for the first seeds
        for head in heads:
            run_dir = out / f"{head.replace(':', '-')}-s{seed}"
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.is_file() and (run_dir / "compare_train.json").is_file():
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
                    *(["--ckpt_path=last"] if last.is_file() else []),
                ]
                t0 = time.perf_counter()
                rss = _run_child(cmd, env, run_dir)
                write_json(
                    {"peak_rss_mb": rss, "wall_s": time.perf_counter() - t0, "command": cmd},
                    run_dir / "compare_train.json",
                )
            runs.append(run_dir)
    return runs
