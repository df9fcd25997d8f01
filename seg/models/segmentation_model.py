"""Model assembly: backbone + decode head (+ auxiliary FCN head on stage 3).

The whole construction of every model is in :func:`build_model`. Mirrors mmsegmentation's
``EncoderDecoder`` with ``decode_head`` on the stages its class names in ``in_stages`` (stage 4 for
most heads) and ``auxiliary_head`` (FCN, 256 channels, one conv, no concat) on stage 3; for a cascade
head (OCRNet, ``cascade = True``) it is mmseg's ``CascadeEncoderDecoder``: the FCN on stage 3 is the
first stage, its logits feed the head. The loss (and the aux weight 0.4) lives in ``seg.training``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import TimmBackbone
from .heads import FCNHead
from .registry import get_head
from .resize import resize_bilinear
from .smp import SmpModel, build_smp_model

__all__ = ["SegmentationModel", "build_model"]


class SegmentationModel(nn.Module):
    """Backbone + head (+ aux head); ``forward`` returns a dict of logits at input resolution.

    Train mode: ``{'out', 'aux' (if an aux head), + extra head outputs such as 'pam', 'cam'}``.
    Eval mode: ``{'out'}`` only (the aux head is not run). Every tensor is (B, num_classes, H, W),
    upsampled bilinearly with ``align_corners=False``: by ``resize_bilinear`` (matrix products, fp32,
    a fast backward on GPU) or, with ``fast_resize = False``, by ``F.interpolate`` (mmseg's way; in the
    input dtype). ``forward(x, resize=False)`` returns the logits at feature resolution (1/8 or 1/16):
    training does that and lets the loss resize them (``seg.training.losses``), which never stores
    full-resolution logits for backward.

    Feeding (see ``seg.models.heads``): the backbone returns ``[stage1, ..., stage4]``; the head gets
    ``feats[i]`` for its single ``in_stages`` entry, or the list of them; a ``cascade`` head also gets the
    aux head's logits, so for it the aux head is required and runs in eval mode too. The aux head reads
    stage 3.

    Args:
        backbone: returns the four stage feature maps.
        head: decode head, returns ``{'out': ..., ...}`` at feature resolution.
        aux_head: optional head on stage 3, or ``None`` (required for a cascade head).
    """

    def __init__(self, backbone: TimmBackbone, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__()
        if getattr(head, "cascade", False) and aux_head is None:
            raise ValueError(
                f"{type(head).__name__} is a cascade head: it needs the auxiliary FCN head "
                "(its first stage), so build it with aux=True"
            )
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        # build_model() stores its arguments here, so a checkpoint can rebuild the model: build_model(**build_args)
        self.build_args: dict[str, Any] = {}
        self.fast_resize = True

    def forward(self, x: torch.Tensor, resize: bool = True) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        size = x.shape[-2:]
        feats = self.backbone(x)  # [stage1, stage2, stage3, stage4]
        stages = getattr(self.head, "in_stages", (3,))
        head_in = feats[stages[0]] if len(stages) == 1 else [feats[i] for i in stages]
        aux = None
        if self.aux_head is not None and (self.training or getattr(self.head, "cascade", False)):
            aux = self.aux_head(feats[2])["out"]
        outs = dict(self.head(head_in, aux) if getattr(self.head, "cascade", False) else self.head(head_in))
        if self.training:
            if aux is not None:
                outs["aux"] = aux
        else:
            outs = {"out": outs["out"]}
        if not resize:
            return outs
        if self.fast_resize:
            return {k: resize_bilinear(v, size) for k, v in outs.items()}
        return {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in outs.items()}


def build_model(
    backbone: str,
    head: str,
    num_classes: int,
    output_stride: Literal[8, 16, 32] = 8,
    aux: bool = True,
    weights: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    aux_channels: int = 256,
    **head_kwargs: Any,
) -> SegmentationModel | SmpModel:
    """Build a segmentation model by name.

    ``head`` is any name of :func:`seg.models.all_head_names` (:mod:`seg.models.registry`); an smp architecture is
    built on the same timm backbone instead (:mod:`seg.models.smp`: an :class:`~seg.models.smp.SmpModel` with the
    same forward contract; no aux head, ``output_stride`` as the architecture allows, ``head_kwargs`` are its
    constructor arguments).

    Args:
        backbone: timm model name (``'resnet101c'``, ``'resnet50c'``, ``'resnet18'`` ...).
        head: a native head (``'fcn'``, ``'psp'``, ``'aspp'``, ``'sep_aspp'``, ``'ccnet'``, ``'danet'``,
            ``'nonlocal'``, ``'gc'``, ``'ema'``, ``'isa'``, ``'dnl'``, ``'ann'``, ``'ocr'``, ``'uper'``, ``'axial'``)
            or an smp architecture (``'smp:Unet'``, ``'smp:DeepLabV3Plus'`` ...).
        num_classes: number of classes.
        output_stride: 8 or 16 (dilated ResNet), 32 undilated (UPerNet's recipe).
        aux: add the auxiliary FCN head on stage 3 (mmseg: 256 channels, 1 conv, no concat); for
            ``'ocr'`` it is the cascade's first stage and required (mmseg: loss weight 0.4 as well).
        weights: backbone weights: ``None``, ``'open-mmlab'`` (mmseg's ImageNet ResNetV1c), ``'imagenet'`` (timm's) or a
            local ``.pth`` / ``.safetensors`` file.
        backbone_kwargs: extra timm constructor arguments (e.g. tiny widths for tests).
        aux_channels: width of the auxiliary head.
        **head_kwargs: forwarded to the head class (e.g. ``channels=512``, ``attention='cbam'``,
            ``recurrence=2``, ``pam_channels=64``).
    """
    spec = get_head(head)  # an unknown name raises here, listing the valid ones
    spec.check(backbone, output_stride)
    if not spec.native:
        return build_smp_model(
            spec.builder,
            head,
            backbone,
            num_classes,
            output_stride=output_stride,
            aux=aux,
            weights=weights,
            backbone_kwargs=backbone_kwargs,
            **head_kwargs,
        )
    body = TimmBackbone(backbone, output_stride=output_stride, weights=weights, model_kwargs=backbone_kwargs)
    stages = getattr(spec.builder, "in_stages", (3,))
    in_channels = body.channels[stages[0]] if len(stages) == 1 else tuple(body.channels[i] for i in stages)
    decode_head = spec.builder(in_channels, num_classes, **head_kwargs)
    aux_head = (
        FCNHead(body.channels[-2], num_classes, channels=aux_channels, num_convs=1, concat_input=False) if aux else None
    )
    model = SegmentationModel(body, decode_head, aux_head)
    model.build_args = dict(
        backbone=backbone,
        head=head,
        num_classes=num_classes,
        output_stride=output_stride,
        aux=aux,
        backbone_kwargs=dict(backbone_kwargs or {}),
        aux_channels=aux_channels,
        **head_kwargs,
    )
    return model
