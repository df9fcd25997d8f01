"""What a run prints: a one-line model summary, one live progress bar for the whole run on a terminal and one
plain line per ``log_every_n_steps`` steps elsewhere (:mod:`seg.training.progress`), and none of Lightning's
notices that do not concern the run (:func:`quiet_lightning`; ``SEG_VERBOSE=1`` shows its start-up notices).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count as _count

from .progress import SegProgressBar, TextProgressBar
from .summary import count_parameters

__all__ = ["STARTUP_NOTICES", "SegModelSummary", "progress_bar", "quiet_lightning", "verbose_requested"]


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


# Lightning's start-up notices, printed by every command before its own output: which accelerators exist, the
# seed, the Tensor Cores hint, the CUDA devices of the rank, and "`Trainer.fit` stopped: `max_steps=N` reached"
# (train.py's closing block says how the run ended). Logger name -> message parts dropped.
_RANK_ZERO_NOTICES = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "You are using a CUDA device",
    "`Trainer.fit` stopped:",
)
STARTUP_NOTICES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": _RANK_ZERO_NOTICES,
    "lightning.fabric.utilities.rank_zero": _RANK_ZERO_NOTICES,
    "lightning.fabric.utilities.seed": ("Seed set to",),  # "[rank: 1] Seed set to 0" on other ranks
    "lightning.pytorch.accelerators.cuda": ("LOCAL_RANK:",),
}


class _StartupNotices(_DropMessages):
    pass


def verbose_requested() -> bool:
    """Whether ``SEG_VERBOSE`` asks for every notice (set and not ``0``/``false``/``no``/``off``)."""
    return os.environ.get("SEG_VERBOSE", "").strip().lower() not in ("", "0", "false", "no", "off")


def quiet_lightning(verbose: Optional[bool] = None) -> None:
    """What every seg command calls before it builds a Trainer (``train.py``, ``seg.evaluate``, and through them
    ``seg.compare``; ``seg.predict`` and ``seg.export`` build none).

    Always drops Lightning's advertising tip (litlogger), its notice that seg's model summary replaces its own, its
    internal deprecation warning about pytree specs and its warning that an epoch has fewer batches than the logging
    interval (seg logs every N steps across epochs): none is about the user's run. Unless ``verbose`` (None:
    the ``SEG_VERBOSE`` environment variable, see :func:`verbose_requested`) also drops the start-up notices of
    :data:`STARTUP_NOTICES`; warnings (real problems) are never dropped. (Lightning logs its notices through the
    one ``rank_zero`` logger.)"""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(type(f) is _DropMessages for f in logger.filters):
        logger.addFilter(_DropMessages("litlogger", "Skipping setting a default `ModelSummary`"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    # Lightning's "The number of training batches (6) is smaller than the logging interval": not so for seg's runs,
    # whose logging interval counts steps across epochs (a small folder dataset is logged every N steps all the same)
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval Trainer\(log_every_n_steps.*")
    verbose = verbose_requested() if verbose is None else verbose
    for name, parts in STARTUP_NOTICES.items():
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, _StartupNotices)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_StartupNotices(*parts))


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


def progress_bar(stream: Any = None) -> ProgressBar:
    """One live bar for the whole run on a terminal, plain lines otherwise (:mod:`seg.training.progress`)."""
    stream = sys.stdout if stream is None else stream
    return SegProgressBar() if getattr(stream, "isatty", lambda: False)() else TextProgressBar()
