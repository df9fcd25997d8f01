"""The key renames from mmsegmentation / mmcv to seg (the table in :mod:`seg.models.mmseg`), in one place: the
mmseg checkpoint conversion and the ``weights: open-mmlab`` backbone init (:mod:`seg.models.pretrained`) share
them. Pure torch, no seg imports.
"""

from __future__ import annotations

import re

import torch

__all__ = ["MMSEG_RENAMES", "convert_mmseg_state_dict"]

# (regex, replacement) applied in order to every mmseg key.
MMSEG_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.stem\.7\.", "backbone.bn1."),
    (r"^backbone\.stem\.([0-6])\.", r"backbone.conv1.\1."),
    (r"^backbone\.", "backbone.body."),
    (r"^decode_head\.0\.", "aux_head."),  # CascadeEncoderDecoder (OCRNet): stage 1 = our aux FCN head
    (r"^decode_head\.1\.", "head."),  # ... stage 2 = the decode head (no mmseg head has a child named 0/1)
    (r"^decode_head\.", "head."),
    (r"^auxiliary_head\.", "aux_head."),
    (r"\.gamma\.scale$", ".gamma"),
    (r"\.pam\.(query|key|value)_project\.", r".pam.\1_conv."),
    (r"\.(nl|dnl)_block\.(g|theta|phi)\.conv\.", r".\1_block.\2."),
    (r"\.(nl|dnl)_block\.conv_out\.conv\.", r".\1_block.conv_out."),
    (r"\.(nl|dnl)_block\.conv_out\.bn\.", r".\1_block.norm."),
)


def convert_mmseg_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename mmseg ``EncoderDecoder`` keys to ``SegmentationModel`` keys (the table in :mod:`seg.models.mmseg`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key.removeprefix("module.")
        for pattern, repl in MMSEG_RENAMES:
            new = re.sub(pattern, repl, new)
        if key.endswith(".gamma.scale") and value.ndim == 0:
            value = value.reshape(1)  # mmcv Scale holds a 0-d parameter, our gammas are (1,)
        out[new] = value
    return out
