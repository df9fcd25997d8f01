"""Progress of a training run in iterations, as mmseg's iteration-based logs: one bar for the whole run on a
terminal (:class:`SegProgressBar`), one plain line every ``log_every_n_steps`` steps elsewhere
(:class:`TextProgressBar`: CI logs, ``nohup``, SLURM files, where a live bar redraws as blocks of lines).

Both show the same numbers (:func:`display_metrics`): the training loss and learning rate, and the last validation's
mIoU in % (what mmseg prints and the closing block reports; the logged ``val/mIoU`` stays in 0-1), without
Lightning's ``v_num``. The ETA is the whole run's: remaining steps at the run's average rate so far (validation
time included, so it is what the wall clock will show).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

__all__ = ["SegProgressBar", "TextProgressBar", "display_metrics", "run_total_steps"]


def run_total_steps(trainer: L.Trainer) -> Optional[int]:
    """The optimizer steps of the whole run (``max_steps``, or what ``max_epochs`` amounts to); None if unbounded."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    total = convert_inf(trainer.estimated_stepping_batches)
    return int(total) if total is not None else None


def display_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """The progress-bar metrics as a user reads them: ``train/loss`` -> ``loss``, ``train/lr`` -> ``lr``,
    ``val/mIoU`` (0-1) -> ``mIoU`` in %; ``v_num`` dropped; other keys kept as logged."""
    shown: dict[str, str] = {}
    for key, value in metrics.items():
        if key == "v_num":
            continue
        if key == "val/mIoU" and isinstance(value, (int, float)):
            shown["mIoU"] = f"{100 * value:.2f}%"
            continue
        name = key[len("train/") :] if key.startswith("train/") else key
        shown[name] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return shown


def _iteration_based(trainer: L.Trainer) -> bool:
    return trainer.max_steps is not None and trainer.max_steps > 0 and (trainer.max_epochs or -1) < 0


def duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SegProgressBar(TQDMProgressBar):
    """One tqdm bar for the whole run, counted in optimizer steps: ``Training  52%|████▋    | 208/400
    [00:31<00:29, 6.6it/s, loss=0.83, lr=0.0094, mIoU=71.20%]``. Lightning's bar restarts at every epoch (and its
    ETA is the epoch's); an iteration-based run (``max_steps``) has no meaningful epochs. A resumed run starts the
    bar at its step. Validation's bar is short-lived (cleared when it ends); its mIoU then shows on the main bar."""

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.set_description("Training")
        return bar

    def init_validation_tqdm(self) -> Tqdm:
        bar = super().init_validation_tqdm()
        bar.leave = False  # even in trainer.validate: the result is printed, the bar is not
        return bar

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        shown: dict[str, Any] = display_metrics(super().get_metrics(trainer, pl_module))
        if not _iteration_based(trainer):
            shown = {"epoch": str(trainer.current_epoch), **shown}
        return shown

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=run_total_steps(trainer))
        bar.initial = bar.n = trainer.global_step  # a resumed run: the rate counts this launch's steps only
        bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the run: nothing restarts at an epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(step, bar.total) and step != bar.n:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        bar = self.val_progress_bar
        bar.reset(total=convert_inf(self.total_val_batches_current_dataloader))
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        several = len(trainer.val_dataloaders) > 1 if isinstance(trainer.val_dataloaders, (list, tuple)) else False
        bar.set_description(f"{desc} DataLoader {dataloader_idx}" if several else desc)  # one: no "DataLoader 0"


class TextProgressBar(ProgressBar):
    """Progress as plain lines: ``step 200/80000 | loss 1.065 | lr 0.009978 | mIoU 71.20% | 2.1 it/s | eta
    10:32:10`` every ``trainer.log_every_n_steps`` steps (and the last), and one ``validation at step N: mIoU
    71.20%`` line per validation. The epoch is shown only when the run is counted in epochs. Used when stdout is not
    a terminal."""

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
        step, total = trainer.global_step, run_total_steps(trainer)
        if step % max(1, trainer.log_every_n_steps) and step != total:
            return
        parts = [f"step {step}" + (f"/{total}" if total else "")]
        if not _iteration_based(trainer):
            parts.append(f"epoch {trainer.current_epoch}")
        parts += [f"{k} {v}" for k, v in display_metrics(self.get_metrics(trainer, pl_module)).items()]
        if self._start is not None:
            seconds, first = time.perf_counter() - self._start[0], self._start[1]
            if step > first and seconds > 0:
                rate = (step - first) / seconds
                parts.append(f"{rate:.3g} it/s")
                if total:
                    parts.append(f"eta {duration(max(0, total - step) / rate)}")
        self._print(" | ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith("val/")}
        shown = " | ".join(f"{k} {v}" for k, v in display_metrics(metrics).items())
        self._print(f"validation at step {trainer.global_step}: {shown}")
