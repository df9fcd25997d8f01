"""``<run_dir>/summary.json``: the last and best validation metrics of a run and its cost, what ``seg.compare``
reads; and the closing block ``train.py`` prints from it (:func:`closing_block`): the result in %, per-class IoU,
where the files are and the commands that use them."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from seg.io import write_json

from .progress import duration

__all__ = ["RunSummary", "ValidateAtEnd", "closing_block", "count_parameters", "next_commands"]

ALL_CLASSES_UP_TO = 20  # the closing block lists every class up to this many, else the TOP_BOTTOM best and worst
TOP_BOTTOM = 5


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class RunSummary(L.Callback):
    """Writes ``<run_dir>/summary.json`` after every validation: last and best val metrics (mIoU, aAcc, mAcc,
    per-class IoU), step, model and parameter count, training throughput (images/s), peak CUDA memory (MiB, on GPU).
    ``seg.compare`` reads it.

    Args:
        run_dir: the run directory; None = ``trainer.default_root_dir``.
    """

    def __init__(self, run_dir: Optional[str] = None) -> None:
        self.run_dir = run_dir
        self._t0: Optional[float] = None
        self._images = 0
        self._seconds = 0.0
        self.best: Optional[dict[str, Any]] = None
        self.started: Optional[float] = None  # when this launch's training started (perf_counter)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is not None and trainer.global_step > 5:  # skip warm-up (cudnn autotune, compile)
            self._seconds += time.perf_counter() - self._t0
            self._images += batch["image"].shape[0] * trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        last = getattr(pl_module, "last_metrics", {}).get("val")
        if last is None:
            return
        if self.best is None or last["mIoU"] > self.best["mIoU"]:
            self.best = dict(last)
        self._write(trainer, pl_module, last)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, last: dict[str, Any]) -> None:
        hp = dict(getattr(pl_module, "hparams", {}))
        run_dir = Path(self.run_dir or trainer.default_root_dir)
        summary = {
            "backbone": hp.get("backbone"),
            "head": hp.get("head"),
            "num_classes": hp.get("num_classes"),
            "params": count_parameters(pl_module.model) if hasattr(pl_module, "model") else None,
            "global_step": trainer.global_step,
            "max_steps": trainer.max_steps,
            "train_images_per_s": self._images / self._seconds if self._seconds > 0 else None,
            "peak_cuda_memory_mb": (
                torch.cuda.max_memory_allocated(pl_module.device) / 2**20 if pl_module.device.type == "cuda" else None
            ),
            "last": last,
            "best": self.best,
        }
        write_json(summary, run_dir / "summary.json")


class ValidateAtEnd(L.Callback):
    """Validate after the last training step when it is not a validation step anyway, so every finished run has
    its final metrics, ``last.ckpt`` at its last step and a ``summary.json`` (``max_steps`` below
    ``val_check_interval``, or a budget that is not a multiple of it).

    How: at the end of the last step it sets ``trainer.should_stop``, on which Lightning's training loop runs the
    validation loop before it stops (``_should_check_val_fx``: stopping early validates).
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        last_step = trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        epoch_loop = trainer.fit_loop.epoch_loop
        last_epoch = (
            trainer.max_epochs is not None
            and trainer.max_epochs > 0
            and trainer.current_epoch >= trainer.max_epochs - 1
            and epoch_loop.batch_progress.is_last_batch
        )
        if (last_step or last_epoch) and trainer.enable_validation:
            trainer.should_stop = True


def next_commands(ckpt: str, run_dir: str, images: Optional[str]) -> list[str]:
    """The commands that use a finished run's checkpoint ``ckpt``: evaluate it, predict ``images`` (a folder; None:
    a placeholder) into ``<run_dir>/predictions``, export it to ONNX. The one place that spells these tools'
    flags for train.py (tests parse each line with the tool's own parser)."""
    q = shlex.quote
    return [
        f"python -m seg.evaluate --ckpt {q(ckpt)}",
        f"python -m seg.predict {q(images) if images else 'IMAGES'} --out {q(_join(run_dir, 'predictions'))} "
        f"--ckpt {q(ckpt)}",
        f"python -m seg.export --ckpt {q(ckpt)} --format onnx --out {q(_join(run_dir, 'model.onnx'))}",
    ]


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it (what a user types), else absolute."""
    rel = os.path.relpath(Path(path).resolve())
    return rel if not rel.startswith("..") else str(Path(path).resolve())


def percent(value: Optional[float]) -> str:
    """A 0-1 score in % (mmseg's unit), two decimals; '-' for None or NaN (a class absent from the split)."""
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def class_rows(best: dict[str, Any]) -> tuple[str, list[str]]:
    """The per-class table of a validation (``summary.json``'s ``best``) or an evaluation (``metrics.json``): every class when there are at most ``ALL_CLASSES_UP_TO``, else the
    ``TOP_BOTTOM`` highest and lowest IoU (classes without an IoU, absent from the split, are counted)."""
    iou, acc = best.get("per_class_IoU") or {}, best.get("per_class_Acc") or {}
    iou = {n: None if v is None or v != v else v for n, v in iou.items()}  # NaN (in memory) as None (in JSON)
    names = list(iou)
    title = "per-class IoU / Acc (%)"
    if len(names) > ALL_CLASSES_UP_TO:
        scored = sorted((n for n in names if iou[n] is not None), key=lambda n: -iou[n])
        absent = len(names) - len(scored)
        title += f", {TOP_BOTTOM} highest and {TOP_BOTTOM} lowest IoU of {len(names)} classes"
        title += f" ({absent} without IoU: absent from the split)" if absent else ""
        names = scored[:TOP_BOTTOM] + ["..."] + scored[-TOP_BOTTOM:] if len(scored) > 2 * TOP_BOTTOM else scored
    width = max([5] + [len(n) for n in names])
    rows = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for n in names:
        rows.append("..." if n == "..." else f"{n:<{width}}  {percent(iou[n]):>6}  {percent(acc.get(n)):>6}")
    return title, rows


def closing_block(
    run_dir: str | Path,
    ckpt_dir: Optional[str | Path],
    seconds: Optional[float] = None,
    images: Optional[str] = None,
    monitor: str = "val/mIoU",
    extra: Sequence[str] = (),
) -> str:
    """What ``train.py`` prints when a run ends: best and last val mIoU in % (mmseg's unit; ``summary.json`` and the
    loggers keep 0-1), the step of the best, the per-class IoU of the best validation, the paths of ``best.ckpt``,
    ``last.ckpt``, ``summary.json`` and ``config.yaml``, ``extra`` lines (where the W&B run is), and the commands
    that use the run (:func:`next_commands`, on ``best.ckpt``). Read from ``<run_dir>/summary.json``."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    best, last = (summary or {}).get("best"), (summary or {}).get("last")
    took = f" in {duration(seconds)}" if seconds is not None else ""
    steps = f" {summary['global_step']} steps" if summary else ""
    lines = [f"Training finished:{steps}{took} (run folder {_shown(run_dir)})"]
    if best is None or last is None:
        lines.append("  no validation ran: no metrics, no best.ckpt (set trainer.val_check_interval)")
    else:
        lines.append(
            f"  val mIoU  best {percent(best['mIoU'])}% at step {best.get('step')}, "
            f"last {percent(last['mIoU'])}% at step {last.get('step')}  "
            f"(aAcc {percent(best.get('aAcc'))}%, mAcc {percent(best.get('mAcc'))}% at the best)"
        )
        title, rows = class_rows(best)
        lines.append(f"  {title}, step {best.get('step')}:")
        lines += [f"    {row}" for row in rows]
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else run_dir / "checkpoints"
    best_ckpt, last_ckpt = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    files = [
        (best_ckpt, "best.ckpt" + (f" (highest {monitor})" if monitor != "val/mIoU" else "")),
        (last_ckpt, "last.ckpt"),
        (summary_path, "summary"),
        (run_dir / "config.yaml", "config"),
    ]
    width = max(len(label) for _, label in files)
    lines += [f"  {label:<{width}}  {_shown(path)}" for path, label in files if path.is_file()]
    lines += [f"  {line}" for line in extra]
    ckpt = best_ckpt if best_ckpt.is_file() else last_ckpt if last_ckpt.is_file() else None
    if ckpt is not None:
        lines.append("Next:")
        lines += [f"  {cmd}" for cmd in next_commands(_shown(ckpt), _shown(run_dir), images)]
    return "\n".join(lines)


def run_closing_block(trainer: L.Trainer, datamodule: Any = None, extra: Sequence[str] = ()) -> str:
    """:func:`closing_block` of the run ``trainer`` just fitted: its run folder, checkpoint folder and monitor, this
    launch's duration, and the validation images' folder for the predict command."""
    summary = next((cb for cb in trainer.callbacks if isinstance(cb, RunSummary)), None)
    ckpt = trainer.checkpoint_callback
    run_dir = Path(summary.run_dir or trainer.default_root_dir) if summary else Path(trainer.default_root_dir)
    started = summary.started if summary is not None else None
    images = None
    try:  # the folder of the first validation image: a runnable predict command (the demo's data/demo/val/images)
        images = _shown(datamodule.dataset("val").samples[0][0].parent)
    except Exception:  # noqa: BLE001  only completes the suggested command
        pass
    return closing_block(
        run_dir,
        getattr(ckpt, "dirpath", None),
        seconds=time.perf_counter() - started if started is not None else None,
        images=images,
        monitor=getattr(ckpt, "monitor", None) or "val/mIoU",
        extra=extra,
    )
