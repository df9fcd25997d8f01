"""Lightning glue: the LightningModule, losses, metrics, LR schedule, callbacks, loggers and the CLI."""

from .callbacks import AtomicCheckpointIO, RunSummary, SegCheckpoint, ValImageLogger
from .losses import SegLoss
from .metrics import SegMetrics, metrics_from_confmat
from .module import SegmentationModule, load_matching_weights
from .resume import ExactResume
from .scheduler import PolyLR

__all__ = [
    "AtomicCheckpointIO",
    "ExactResume",
    "PolyLR",
    "RunSummary",
    "SegCheckpoint",
    "SegLoss",
    "SegMetrics",
    "SegmentationModule",
    "ValImageLogger",
    "load_matching_weights",
    "metrics_from_confmat",
]
