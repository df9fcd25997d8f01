"""Lightning glue: the LightningModule, losses, LR schedule, callbacks (checkpoints, run summary, exact resume),
loggers, console output and the train.py CLI."""

from .checkpointing import AtomicCheckpointIO, SegCheckpoint
from .losses import SegLoss
from .module import SegmentationModule, load_matching_weights
from .resume import ExactResume
from .scheduler import PolyLR
from .summary import RunSummary

__all__ = [
    "AtomicCheckpointIO",
    "ExactResume",
    "PolyLR",
    "RunSummary",
    "SegCheckpoint",
    "SegLoss",
    "SegmentationModule",
    "load_matching_weights",
]
