"""Models: timm backbones, decode heads (one file each), assembly and mmsegmentation conversion."""

from .backbone import TESTED_BACKBONES, TimmBackbone, create_backbone
from .heads import HEADS, create_head, head_signature
from .checkpoint import load_seg_checkpoint, save_seg_checkpoint
from .mmseg import convert_mmseg_checkpoint, convert_mmseg_state_dict, load_mmseg_checkpoint
from .segmentation_model import SegmentationModel, build_model

__all__ = [
    "HEADS", "TESTED_BACKBONES", "SegmentationModel", "TimmBackbone",
    "build_model", "convert_mmseg_checkpoint", "convert_mmseg_state_dict", "create_backbone", "create_head", "head_signature",
    "load_mmseg_checkpoint", "load_seg_checkpoint", "save_seg_checkpoint",
]
