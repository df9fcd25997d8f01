"""Stopping a run on SIGTERM or Ctrl-C with a resumable ``last.ckpt`` and an exit code that says it did not finish.

Why: ``kill``, ``docker stop``, ``timeout`` and SLURM preemption send SIGTERM, Ctrl-C sends SIGINT. Lightning's own
SIGTERM handling stops ``fit`` mid-epoch, saves nothing since the last validation and lets the process exit 0, so a
scheduler or ``seg.compare --train`` counts the run as finished; a Ctrl-C saves nothing either. Stopping inside a
step (where a signal lands) would leave half-updated weights, so :class:`StopOnSignal` only *records* the signal
and stops at the next step boundary:

* at the end of the step in progress it writes ``last.ckpt`` at that step (atomically, with the exact-resume state:
  the state Lightning's ``every_n_train_steps`` checkpoints have, so ``--ckpt_path last`` continues the
  uninterrupted run exactly);
* a validation due at that step still runs (it writes ``best.ckpt``, ``summary.json`` and a post-validation
  ``last.ckpt``), so the resumed run has every validation of the uninterrupted one. A signal during a validation
  lets it finish;
* before the next step it raises :class:`RunStopped`, a ``SystemExit`` with code 143 (SIGTERM, 128 + 15) or 130
  (SIGINT); ``train.py`` prints one line with what was saved and the command that continues the run.

A second signal stops at once (the previous ``last.ckpt`` stays intact: checkpoint writes are atomic); the same
signal again within ``DUPLICATE_WINDOW_S`` is the first stop delivered twice (to the process group, and forwarded
by a parent such as ``seg.compare --train``), not a second request. Under DDP the
ranks agree on the stop once per step (a max all-reduce of the signal number), because saving is collective.
DataLoader workers started after :meth:`StopOnSignal.setup` inherit its handlers, so a signal sent to the whole
process group (Ctrl-C, SLURM) does not kill them under the main process.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.distributed as dist

__all__ = ["RunStopped", "StopOnSignal", "exit_code", "resume_command"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_WINDOW_S = 1.0  # the same signal this soon after the first is one stop delivered twice


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 128 + the signal number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


class RunStopped(SystemExit):
    """Training stopped on a signal. ``code`` is the exit code (:func:`exit_code`); ``message`` says what was
    saved (without the command that continues the run, which only ``train.py`` knows)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(exit_code(signum))
        self.signum = signum
        self.message = message


class StopOnSignal(L.Callback):
    """Turns SIGTERM / SIGINT into a stop at the next step boundary with ``last.ckpt`` written there (see the module
    docstring). ``train.py`` always adds it; it does nothing until a signal arrives.

    Attributes:
        signum: the first signal received (None: none).
        saved: ``(path, step)`` of the ``last.ckpt`` that holds this run at the stop, or None.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._first_at = 0.0
        self.saved: Optional[tuple[Path, int]] = None
        self._stopping = False  # every rank knows of the signal and wrote last.ckpt: stop before the next step
        self._start_step = 0
        self._trainer: Optional[L.Trainer] = None
        self._active = False
        self._originals: dict[int, Any] = {}

    # -- signal handlers ----------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if not self._active:  # left installed after fit (Lightning restores the handlers it found at its start)
            self._pass_on(signum, frame)
        elif self.signum is None:  # between two bytecodes of the main thread: record only (a print could re-enter)
            self.signum = signum
            self._first_at = time.monotonic()
        elif signum == self.signum and time.monotonic() - self._first_at < DUPLICATE_WINDOW_S:
            return  # the first stop, delivered again (process group + a forwarding parent)
        else:
            self.restore()
            raise RunStopped(signum, f"stopped at once by a second {signal.Signals(signum).name}; {self.on_disk()}")

    def _pass_on(self, signum: int, frame: Any) -> None:
        """What the process did with ``signum`` before fit: the earlier handler, or the default action."""
        original = self._originals.get(signum, signal.SIG_DFL)
        if callable(original):
            original(signum, frame)
        elif original != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _install(self, *signums: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread (fit run from another thread keeps Lightning's)
        self._active = True
        for signum in signums:
            previous = signal.signal(signum, self._handle)
            if signum not in self._originals:
                self._originals[signum] = previous if previous is not None else signal.SIG_DFL

    def restore(self) -> None:
        """Put back the handlers found before fit (after it, Lightning re-installs those it found: these)."""
        self._active = False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, original in self._originals.items():
            signal.signal(signum, original)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._trainer = trainer
            self._install(*_SIGNALS)  # before the DataLoader workers start, so that they inherit it

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._install(signal.SIGTERM)  # Lightning registers its own SIGTERM handler after setup

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore()

    # -- the stop -----------------------------------------------------------------------------------------------
    def _requested(self, trainer: L.Trainer) -> bool:
        """Whether any rank received a signal (every rank calls this at the same point of the same step)."""
        signum = self.signum or 0
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum and self.signum is None:
            self.signum = signum  # another rank's signal
        return bool(signum)

    @staticmethod
    def _boundary(trainer: L.Trainer, batch_idx: int, end: bool) -> bool:
        """At an optimizer step (end of a batch) or before the first batch of an accumulation window (start): a
        stop between them would lose the accumulated gradients and resume mid-window."""
        n = max(1, int(trainer.accumulate_grad_batches))
        if end:
            return (batch_idx + 1) % n == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return batch_idx % n == 0

    @staticmethod
    def _checkpoint(trainer: L.Trainer) -> Any:
        from .checkpointing import SegCheckpoint

        return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, SegCheckpoint)), None)

    def _save(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` at this step, unless it holds this step already (written by this step's validation) or this
        launch trained nothing. Written by ``trainer.save_checkpoint`` (every rank takes part, rank 0 writes), not
        through :class:`SegCheckpoint`, whose bookkeeping must still let this step's validation save."""
        ckpt, step = self._checkpoint(trainer), trainer.global_step
        if ckpt is None or ckpt.dirpath is None or step == self._start_step:
            return
        path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        if ckpt._last_written_step != step and (self.saved is None or self.saved[1] != step):
            trainer.save_checkpoint(path, weights_only=False)
        self.saved = (path, step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._stopping or not self._boundary(trainer, batch_idx, end=True) or not self._requested(trainer):
            return
        self._stopping = True
        self._save(trainer)  # a validation due at this step runs after this hook, then the stop

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        # Without DDP the flag is read here too (no collective needed): a signal during a validation or a data
        # fetch stops before the next step instead of after it.
        if not self._boundary(trainer, batch_idx, end=False):
            return
        if not (self._stopping or (trainer.world_size == 1 and self._requested(trainer))):
            return
        self._save(trainer)
        name = signal.Signals(self.signum).name
        if self.saved is None:
            raise RunStopped(self.signum, f"stopped by {name} before the first training step: {self.on_disk()}")
        path, step = self.saved
        budget = f" of {trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        raise RunStopped(self.signum, f"stopped by {name} at step {step}{budget}: saved {path}")

    def on_disk(self) -> str:
        """What holds the run after a stop that did not reach a step boundary (a second signal, a signal before
        training, DataLoader workers that died of it)."""
        if self.saved is not None:
            return f"{self.saved[0]} holds step {self.saved[1]}"
        ckpt = self._checkpoint(self._trainer) if self._trainer is not None else None
        if ckpt is not None and ckpt._last_written_step >= 0:
            return f"{ckpt.dirpath}/last.ckpt holds step {ckpt._last_written_step}"
        return "nothing saved by this launch"

    def stopped(self, err: BaseException) -> Optional[RunStopped]:
        """``err`` as a :class:`RunStopped` when a signal caused it: itself, Lightning's ``SIGTERMException``
        (a signal before training), or the error of DataLoader workers that the signal killed; else None."""
        if isinstance(err, RunStopped):
            return err
        if self.signum is None:
            return None
        name = signal.Signals(self.signum).name
        return RunStopped(self.signum, f"stopped by {name}; {self.on_disk()}")


def resume_command(args: Any) -> str:
    """The command line of this run with ``--ckpt_path last`` (instead of any ``--ckpt_path`` it had)."""
    argv = list(sys.argv[1:] if args is None else args) if isinstance(args, (list, tuple, type(None))) else []
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    program = sys.argv[0] if args is None and sys.argv[0].endswith(".py") else "train.py"
    return shlex.join(["python", program, *kept, "--ckpt_path", "last"])
