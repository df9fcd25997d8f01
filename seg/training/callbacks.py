"""The callbacks of seg's trainer, each in the module of its concern (re-exported here):

* :mod:`seg.training.checkpointing`: ``SegCheckpoint`` (best + last, atomic), ``AtomicCheckpointIO``;
* :mod:`seg.training.summary`: ``RunSummary`` (``summary.json``, read by ``seg.compare``);
* :mod:`seg.training.loggers`: ``ValImageLogger`` (validation images to W&B);
* :mod:`seg.training.console`: the progress bar and the model summary;
* :mod:`seg.training.resume`: ``ExactResume`` (RNG state and data position of a resume).
"""

from seg.models.checkpoint import atomic_write_text

from .checkpointing import AtomicCheckpointIO, SegCheckpoint, atomic_torch_save, check_checkpoint_dir
from .console import SegModelSummary, SegProgressBar, TextProgressBar
from .loggers import ValImageLogger
from .summary import RunSummary, count_parameters

__all__ = [
    "AtomicCheckpointIO",
    "RunSummary",
    "SegCheckpoint",
    "SegModelSummary",
    "SegProgressBar",
    "TextProgressBar",
    "ValImageLogger",
    "atomic_torch_save",
    "atomic_write_text",
    "check_checkpoint_dir",
    "count_parameters",
]
