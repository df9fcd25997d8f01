"""Models: timm backbones, decode heads (one file each), the head registry, assembly, smp architectures and
mmsegmentation conversion."""

from .backbone import TESTED_BACKBONES, TimmBackbone, create_backbone
from .checkpoint import save_checkpoint
from .heads import HEADS
from .mmseg import convert_mmseg_checkpoint, convert_mmseg_state_dict, load_mmseg_checkpoint
from .optimize import optimize_for_inference
from .registry import HeadSpec, all_head_names, get_head, head_signature, recipe_output_stride
from .segmentation_model import SegmentationModel, build_model
from .smp import SMP_HEADS, SmpModel

__all__ = [
    "HEADS",
    "SMP_HEADS",
    "TESTED_BACKBONES",
    "HeadSpec",
    "SegmentationModel",
    "SmpModel",
    "TimmBackbone",
    "all_head_names",
    "build_model",
    "convert_mmseg_checkpoint",
    "convert_mmseg_state_dict",
    "create_backbone",
    "get_head",
    "head_signature",
    "load_mmseg_checkpoint",
    "optimize_for_inference",
    "recipe_output_stride",
    "save_checkpoint",
]
