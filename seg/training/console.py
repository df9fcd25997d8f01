"""What a run prints: a one-line model summary, a live progress bar on a terminal and one plain line per
``log_every_n_steps`` steps elsewhere (CI logs, ``nohup``, SLURM files, where a live bar redraws as blocks of
lines), and none of Lightning's notices that do not concern the run (:func:`quiet_lightning`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count as _count

from .summary import count_parameters

__all__ = ["SegModelSummary", "SegProgressBar", "TextProgressBar", "progress_bar", "quiet_lightning"]


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def quiet_lightning() -> None:
    """Drops Lightning's advertising tip (litlogger), its notice that seg's model summary replaces its own, and its
    internal deprecation warning about pytree specs: printed on every run, none is about the user's run. (Lightning
    logs its notices through the one ``rank_zero`` logger.)"""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages("litlogger", "Skipping setting a default `ModelSummary`"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class SegModelSummary(ModelSummary):
    """One line per part of the network (backbone, head, aux head) with its parameters, and the total.

    Replaces Lightning's table, whose FLOPs column reads 0 for every model without an ``example_input_array`` (for
    measured FLOPs and speed per head see ``python -m seg.bench``)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "model", pl_module)
        total = count_parameters(net)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        parts = ", ".join(
            f"{name} {_count(count_parameters(child))} ({type(child).__name__})" for name, child in net.named_children()
        )
        frozen = f", {_count(total - trainable)} frozen" if trainable < total else ""
        rank_zero_info(f"model: {_count(total)} parameters{frozen}, {total * 4 / 2**20:.1f} MB in fp32: {parts}")


class SegProgressBar(RichProgressBar):
    """Rich progress bar whose epoch label reads ``Epoch 3 (max 80000 iters)`` in iteration-based runs
    (``max_epochs: -1`` with ``max_steps``, the mmseg way) instead of Lightning's ``Epoch 3/-2``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            text += f"/{trainer.max_epochs - 1}"
        elif trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" (max {trainer.max_steps} iters)"
        return f"{text:{len(self.validation_description)}}"  # padded: no flicker against "Validation"


def _format_metrics(metrics: dict[str, Any]) -> str:
    items = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        items.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(items)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TextProgressBar(ProgressBar):
    """Progress as plain lines: ``step 200/80000 | epoch 0 | train/loss 1.065 | train/lr 0.009978 | 2.1 it/s |
    eta 10:32:10`` every ``trainer.log_every_n_steps`` steps (and the last), and one ``validation at step N:
    ...`` line per validation. Used when stdout is not a terminal."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start: Optional[tuple[float, int]] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, max_steps = trainer.global_step, trainer.max_steps
        if step % max(1, trainer.log_every_n_steps) and step != max_steps:
            return
        text = f"step {step}" + (f"/{max_steps}" if max_steps and max_steps > 0 else "")
        text += f" | epoch {trainer.current_epoch}"
        metrics = _format_metrics(self.get_metrics(trainer, pl_module))
        if metrics:
            text += f" | {metrics}"
        if self._start is not None:
            seconds, first = time.perf_counter() - self._start[0], self._start[1]
            if step > first and seconds > 0:
                rate = (step - first) / seconds
                text += f" | {rate:.3g} it/s"
                if max_steps and max_steps > 0:
                    text += f" | eta {_duration((max_steps - step) / rate)}"
        self._print(text)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith("val/")}
        self._print(f"validation at step {trainer.global_step}: {_format_metrics(metrics)}")


def progress_bar(stream: Any = None) -> ProgressBar:
    """The live Rich bar on a terminal, plain lines otherwise."""
    stream = sys.stdout if stream is None else stream
    return SegProgressBar(leave=True) if getattr(stream, "isatty", lambda: False)() else TextProgressBar()
