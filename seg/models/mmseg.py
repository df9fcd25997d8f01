"""Load mmsegmentation 1.x (and 0.x) checkpoints of every ``seg.models.HEADS`` head into seg models.

FCN, PSPNet, DeepLabV3 (``aspp``), DeepLabV3+ (``sep_aspp``), CCNet, DANet, Non-local, GCNet, EMANet,
ISANet, DNLNet, ANN, OCRNet and UPerNet (``axial`` has no mmseg counterpart). Our heads keep mmseg's
module names (``convs``, ``conv_cat``, ``conv_seg``, ``cca``, ``psp_modules``, ``aspp_modules``,
``object_context_block`` ...), and timm ``resnet50c`` / ``resnet101c`` are mmseg's ``ResNetV1c`` with the same
block names, so the mapping is a short list of renames (``MMSEG_RENAMES``, in :mod:`seg.models.mmseg_keys`, which
the ``weights: open-mmlab`` backbone init shares):

============================================  =============================================================
mmseg                                         seg
============================================  =============================================================
``backbone.stem.{0,1,3,4,6}.``                ``backbone.body.conv1.{0,1,3,4,6}.`` (deep stem;
``backbone.stem.7.``                          ``backbone.body.bn1.`` timm's stem_width = stem_channels / 2)
``backbone.<rest>``                           ``backbone.body.<rest>`` (layer1..4, conv1/bn1)
``decode_head.`` / ``auxiliary_head.``        ``head.`` / ``aux_head.``
``decode_head.0.`` / ``decode_head.1.``       ``aux_head.`` / ``head.`` (OCRNet's cascade: FCN, then OCR)
``*.gamma.scale`` (mmcv ``Scale``, 0-d)       ``*.gamma`` (shape (1,))
``pam.{query,key,value}_project.``            ``pam.{query,key,value}_conv.``
``{nl,dnl}_block.{g,theta,phi}.conv.``        ``{nl,dnl}_block.{g,theta,phi}.``
``{nl,dnl}_block.conv_out.conv.`` / ``.bn.``  ``{nl,dnl}_block.conv_out.`` / ``.norm.``
============================================  =============================================================

mmseg's ``EncoderDecoder.encode_decode`` = backbone -> decode head -> bilinear resize
(align_corners=False) to the input size, which is ``SegmentationModel.forward(x)['out']`` in eval
mode; tests/test_mmseg_compat.py checks the logits against mmseg-generated golden tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import checkpoint_meta, load_strict, save_checkpoint
from .mmseg_keys import MMSEG_RENAMES, convert_mmseg_state_dict
from .safe_load import read_state_dict
from .segmentation_model import SegmentationModel, build_model

__all__ = [
    "MMSEG_RENAMES",
    "convert_mmseg_checkpoint",
    "convert_mmseg_state_dict",
    "load_converted_state_dict",
    "load_mmseg_checkpoint",
    "read_mmseg_state_dict",
]

MMSEG_HINT = (
    "Check --head, --backbone (resnet50c/resnet101c for mmseg ResNetV1c), --num_classes, the head width "
    "(channels) and whether the checkpoint has an auxiliary head."
)


def read_mmseg_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmseg checkpoint file (or a bare state dict), read without running code from it.

    mmseg 1.x checkpoints also pickle mmengine metadata (``meta``, ``message_hub``); it is read as inert data
    through the allow-list of :func:`seg.models.safe_load.read_checkpoint`, and dropped.
    """
    return read_state_dict(path, what="mmseg checkpoint")


def load_mmseg_checkpoint(
    path: str | Path,
    head: str,
    backbone: str,
    num_classes: int,
    aux: bool | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build ``build_model(backbone, head, num_classes, **kwargs)`` and load an mmseg checkpoint into it.

    Args:
        path: mmseg checkpoint (``{'state_dict': ...}`` as published by OpenMMLab, or a bare state dict).
        head: a ``seg.models.HEADS`` key with an mmseg counterpart (all but ``'axial'``), e.g. ``'ccnet'``.
        backbone: timm name of the mmseg backbone: ``'resnet50c'`` / ``'resnet101c'`` for ResNetV1c
            (the ``*_r50-d8`` / ``*_r101-d8`` configs), ``'resnet50d'`` for ResNetV1d ...
        num_classes: classes of the checkpoint (19 for Cityscapes, 150 for ADE20K).
        aux: build the auxiliary head; ``None`` = exactly when the checkpoint has ``auxiliary_head`` keys.
        **kwargs: further ``build_model`` arguments (``output_stride`` (8 for D8), ``backbone_kwargs``,
            ``aux_channels``, head kwargs such as ``channels``).

    Returns:
        The model in eval mode; ``model(x)['out']`` equals mmseg's ``encode_decode(x)``
        (for DANet: its fused ``pam_cam`` output, which is what mmseg predicts with).

    Raises:
        ValueError: listing missing / unexpected keys or shape mismatches after renaming.
    """
    state = convert_mmseg_state_dict(read_mmseg_state_dict(path))
    if aux is None:
        aux = any(k.startswith("aux_head.") for k in state)
    model = build_model(backbone, head, num_classes, aux=aux, weights=None, **kwargs)
    load_converted_state_dict(model, state, source=str(path))
    return model.eval()


def convert_mmseg_checkpoint(
    src: str | Path,
    dst: str | Path,
    head: str,
    backbone: str,
    num_classes: int,
    aux: bool | None = None,
    serving: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Path:
    """Load an mmseg checkpoint (see :func:`load_mmseg_checkpoint`) and write it as a self-describing seg
    checkpoint (:func:`seg.models.checkpoint.save_checkpoint`).

    ``serving``: the :func:`seg.models.checkpoint.checkpoint_meta` arguments besides the build arguments (classes,
    palette, mean, std, test_scale, dataset ...); ``seg.convert`` fills them for the benchmark the checkpoint was
    trained on. None records the build arguments only."""
    model = load_mmseg_checkpoint(src, head, backbone, num_classes, aux=aux, **kwargs)
    meta = checkpoint_meta(model.build_args, **serving) if serving is not None else None
    return save_checkpoint(model, dst, meta=meta, extra={"converted_from": str(src)})


def load_converted_state_dict(model: SegmentationModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that lists every missing / unexpected / mis-shaped key."""
    load_strict(model, state, source, hint=MMSEG_HINT)
