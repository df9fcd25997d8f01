"""Models: timm backbones, decode heads (one file each), assembly and mmsegmentation conversion."""

from .backbone import TESTED_BACKBONES, TimmBackbone, create_backbone
from .heads import HEADS, create_head
from .segmentation_model import SegmentationModel, build_model

__all__ = [
    "HEADS", "TESTED_BACKBONES", "SegmentationModel", "TimmBackbone",
    "build_model", "create_backbone", "create_head",
]
