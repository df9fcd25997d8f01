"""Moved to :mod:`seg.models.inference` (pure PyTorch, used by the models' users too); re-exported here."""

from seg.models.inference import *  # noqa: F401,F403
from seg.models.inference import __all__  # noqa: F401
