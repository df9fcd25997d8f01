"""Models: timm backbones, decode heads (one file each), assembly, smp architectures and mmsegmentation conversion."""

from .backbone import TESTED_BACKBONES, TimmBackbone, create_backbone
from .checkpoint import load_seg_checkpoint, save_seg_checkpoint
from .heads import HEADS, create_head, head_signature
from .mmseg import convert_mmseg_checkpoint, convert_mmseg_state_dict, load_mmseg_checkpoint
from .segmentation_model import SegmentationModel, all_head_names, build_model, recipe_output_stride
from .smp import SMP_HEADS, SmpModel, check_output_stride

__all__ = [
    "HEADS",
    "SMP_HEADS",
    "TESTED_BACKBONES",
    "SegmentationModel",
    "SmpModel",
    "TimmBackbone",
    "all_head_names",
    "build_model",
    "check_output_stride",
    "convert_mmseg_checkpoint",
    "convert_mmseg_state_dict",
    "create_backbone",
    "create_head",
    "head_signature",
    "recipe_output_stride",
    "load_mmseg_checkpoint",
    "load_seg_checkpoint",
    "save_seg_checkpoint",
]
