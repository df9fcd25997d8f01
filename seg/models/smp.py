"""segmentation_models_pytorch architectures as seg models: ``head='smp:<Architecture>'``.

Every architecture that the installed smp offers (``smp.MODEL_ARCHITECTURES_MAPPING``; smp 0.6: Unet,
UnetPlusPlus, MAnet, Linknet, FPN, PSPNet, DeepLabV3, DeepLabV3Plus, PAN, UPerNet, Segformer, DPT) is registered
in :data:`SMP_HEADS` as ``'smp:<class name>'``, so the trainer, ``seg.compare`` and ``seg.bench`` compare them with
the native heads on the same data, schedule and loss. smp's own code builds the network (not re-implemented); this
file maps seg's model arguments onto it:

* ``backbone`` -> ``encoder_name='tu-<backbone>'``: smp's timm universal encoder, the same timm model as the native
  backbone (smp's own ``resnet*`` encoders dilate differently from mmseg's; ``tu-`` avoids them). DPT needs a ViT
  (``vit_*``, ``test_vit``); seg sets ``dynamic_img_size=True`` for it unless ``backbone_kwargs`` say otherwise,
  since training crops and evaluation images differ in size.
* ``backbone_kwargs`` -> timm constructor arguments of the encoder (e.g. tiny widths for tests).
* ``weights``: ``None`` (random init), ``'imagenet'`` (timm's pretrained weights; offline without a cache this
  raises an error saying what to do), or a local ``.pth`` / ``.safetensors`` timm state dict loaded strictly into
  the encoder, read safely (:mod:`seg.models.checkpoint`).
* ``output_stride`` -> ``encoder_output_stride`` where the architecture has one (DeepLabV3 and DeepLabV3+: 8 or 16,
  PAN: 16 or 32). The others decode from the undilated encoder (skip connections at strides 2 to 32): they accept
  only ``output_stride=32``. The registry (:meth:`seg.models.registry.HeadSpec.check`) says so before building.
* ``num_classes`` -> ``classes``; ``in_channels=3``; ``activation=None`` (logits: the loss applies the softmax);
  ``aux_params=None`` (smp's auxiliary output is an image-level classifier, not a segmentation head).
* ``aux``: smp architectures have no auxiliary segmentation head. ``aux=True`` is ignored with a warning (so a config
  written for the native heads, ``aux: true``, trains an smp architecture unchanged); checkpoints record
  ``aux=False``.
* Every other architecture argument (``decoder_channels``, ``decoder_attention_type``, ``encoder_depth`` ...) is a
  ``head_kwargs`` entry, typed by :func:`smp_signature` (the class's own signature); unknown names raise.

Input sizes: smp decoders need sizes divisible by 32 (PAN also a stride-16/32 map of at least 8 x 8), seg's
evaluation runs whole images of any size. :class:`SmpModel` pads the normalised image with zeros (the mean colour)
at the bottom/right to what the architecture needs and crops the logits back, so logits always come at input
resolution. Both stay symbolic under ``torch.export``: ``seg.export --dynamic`` works (PAN: at a fixed size only).
"""

from __future__ import annotations

import inspect
import typing
import warnings
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import check_name, imagenet_weights_error, load_weights_file, resolve_weights

__all__ = [
    "SMP_HEADS",
    "SmpModel",
    "backbone_error",
    "build_smp_model",
    "default_output_stride",
    "smp_signature",
    "supported_output_strides",
]

PREFIX = "smp:"

#: ``'smp:<Architecture>'`` -> smp class, for every architecture of the installed smp.
SMP_HEADS: dict[str, type[nn.Module]] = {
    f"{PREFIX}{cls.__name__}": cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()
}

#: Arguments of every smp architecture that seg fills itself (``encoder_output_stride`` too, where it exists).
SUPPLIED: frozenset[str] = frozenset(
    {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params"}
)

#: Input sizes are padded to a multiple of this (the deepest encoder stride smp decoders upsample from).
SIZE_DIVISOR = 32


def _parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """The named constructor parameters (smp's ``**kwargs``, which go to timm, left out)."""
    return {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def smp_signature(cls: type[nn.Module]) -> frozenset[str]:
    """The arguments of smp class ``cls`` that seg fills itself; its other named parameters (typed, with defaults)
    are the head's ``model.head_kwargs``."""
    return frozenset(SUPPLIED | ({"encoder_output_stride"} if "encoder_output_stride" in _parameters(cls) else set()))


def supported_output_strides(cls: type[nn.Module]) -> tuple[int, ...]:
    """The ``output_stride`` values ``cls`` can honour: its ``encoder_output_stride`` choices, else ``(32,)`` (the
    undilated encoder its decoder reads at strides 2 to 32)."""
    param = _parameters(cls).get("encoder_output_stride")
    if param is None:
        return (32,)
    choices = typing.get_args(param.annotation)  # Literal[8, 16]
    if not choices or not all(isinstance(c, int) for c in choices):
        return (8, 16, 32)  # an smp version without a Literal annotation: let smp decide
    return tuple(sorted(choices))


def default_output_stride(cls: type[nn.Module]) -> int:
    """The architecture's own default output stride (smp's ``encoder_output_stride`` default, else 32)."""
    param = _parameters(cls).get("encoder_output_stride")
    return int(param.default) if param is not None else 32


def backbone_error(cls: type[nn.Module], name: str, backbone: str) -> str | None:
    """Why smp class ``cls`` (head ``name``) cannot be built on timm model ``backbone``, or ``None``. DPT
    reassembles the tokens of a Vision Transformer: it needs a ViT (a timm model with ``patch_embed``); every other
    architecture takes any timm model with ``features_only``."""
    if cls is not getattr(smp, "DPT", None):
        return None
    encoder = backbone.removeprefix("tu-")
    try:
        with torch.device("meta"):
            model = timm.create_model(encoder, pretrained=False)
    except Exception:  # noqa: BLE001  an unknown name: check_name reports it
        return None
    if hasattr(model, "patch_embed") and hasattr(model, "forward_intermediates"):
        return None
    return (
        f"{name} needs a Vision Transformer backbone (a timm ViT such as vit_base_patch16_224.augreg_in21k, "
        f"test_vit for tests), not {backbone!r}: set --model.backbone"
    )


def _min_size(net: nn.Module) -> int:
    """Smallest input side the network accepts: PAN's feature-pyramid attention pools its last map 3 times."""
    if isinstance(net, smp.PAN):
        return 8 * int(net.encoder.output_stride)
    return SIZE_DIVISOR


class SmpModel(nn.Module):
    """An smp network with :class:`seg.models.SegmentationModel`'s interface: ``forward`` returns
    ``{'out': logits}`` (B, num_classes, H, W) at input resolution, in train and eval mode alike.

    ``forward(x, resize=False)`` (what training calls) returns the same input-resolution logits: smp decoders
    upsample themselves. ``backbone`` is the smp encoder (``--model.freeze_backbone`` freezes it), ``head`` the
    decoder plus segmentation head. State-dict keys are smp's under ``net.`` (``net.encoder.model.layer1...``).

    Args:
        net: an smp ``SegmentationModel`` built with ``activation=None`` and no ``aux_params``.
    """

    aux_head = None

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.min_size = _min_size(net)
        # build_model() stores its arguments here, so a checkpoint can rebuild the model: build_model(**build_args)
        self.build_args: dict[str, Any] = {}
        self.fast_resize = True  # no effect: the logits come at input resolution; kept for callers that set it

    @property
    def backbone(self) -> nn.Module:
        return self.net.encoder

    @property
    def head(self) -> nn.Module:
        return self.net.decoder

    def forward(self, x: torch.Tensor, resize: bool = True) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % SIZE_DIVISOR, (-w) % SIZE_DIVISOR  # to the next multiple of 32
        if self.min_size > SIZE_DIVISOR:  # PAN only (a size branch here, so PAN exports at a fixed size)
            ph, pw = max(self.min_size - h, ph), max(self.min_size - w, pw)
        # bottom/right zeros = the mean colour of the normalised image. Unconditional (a pad of 0 copies the
        # input): a branch on the size would freeze it in a dynamic-shape export (seg.export --dynamic).
        x = F.pad(x, (0, pw, 0, ph))
        logits = self.net(x)  # (B, num_classes, H + ph, W + pw)
        return {"out": F.pad(logits, (0, -pw, 0, -ph))}  # negative padding crops: (B, num_classes, H, W)


def build_smp_model(
    cls: type[nn.Module],
    head: str,
    backbone: str,
    num_classes: int,
    output_stride: int = 32,
    aux: bool = False,
    weights: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **arch_kwargs: Any,
) -> SmpModel:
    """Build smp class ``cls`` (head ``head``, ``'smp:Unet'`` ...) on timm encoder ``backbone``; see the module
    docstring for how each argument maps. :func:`seg.models.build_model` calls this for the registry's smp heads,
    after checking ``output_stride`` and ``backbone`` (:meth:`seg.models.registry.HeadSpec.check`)."""
    params = _parameters(cls)
    supplied = smp_signature(cls)
    fixed = sorted(set(arch_kwargs) & supplied)
    if fixed:
        raise ValueError(
            f"head_kwargs {fixed} of {head} are set by seg (from model.backbone, model.weights, "
            "model.num_classes, model.output_stride); remove them"
        )
    unknown = sorted(set(arch_kwargs) - set(params))
    if unknown:
        valid = sorted(set(params) - supplied)
        raise ValueError(
            f"Unknown head_kwargs {unknown} for {head}. Its arguments: {', '.join(valid)} "
            "(timm arguments of the encoder go in model.backbone_kwargs)"
        )
    if aux:
        warnings.warn(
            f"{head}: smp architectures have no auxiliary segmentation head; model.aux=true is ignored "
            "(set model.aux=false to silence this)",
            UserWarning,
            stacklevel=3,
        )
    encoder = backbone.removeprefix("tu-")
    check_name(encoder)
    pretrained, weights_path = resolve_weights(weights)
    encoder_kwargs = dict(backbone_kwargs or {})
    if cls is getattr(smp, "DPT", None):
        encoder_kwargs.setdefault("dynamic_img_size", True)  # training crops and evaluation images differ in size
    clash = sorted(set(encoder_kwargs) & set(params))
    if clash:
        raise ValueError(f"backbone_kwargs {clash} are also arguments of {head}; pass them in model.head_kwargs")
    if "encoder_output_stride" in params:
        arch_kwargs["encoder_output_stride"] = output_stride
    try:
        net = cls(
            encoder_name=f"tu-{encoder}",
            encoder_weights=True if pretrained else None,
            in_channels=3,
            classes=num_classes,
            activation=None,
            aux_params=None,
            **arch_kwargs,
            **encoder_kwargs,
        )
    except (OSError, RuntimeError) as err:  # huggingface_hub's offline errors are OSErrors
        if not pretrained:
            raise
        raise imagenet_weights_error(encoder, err) from err
    if weights_path is not None:
        load_weights_file(net.encoder.model, weights_path)
    model = SmpModel(net)
    model.build_args = dict(
        backbone=backbone,
        head=head,
        num_classes=num_classes,
        output_stride=output_stride,
        aux=False,
        backbone_kwargs=dict(backbone_kwargs or {}),
        **{k: v for k, v in arch_kwargs.items() if k != "encoder_output_stride"},
    )
    return model
