"""Dilated backbones from timm: the last four feature maps (stages 1-4) at output stride 8, 16 or 32.

Dilated ResNets as used by DeepLab, PSPNet, DANet, CCNet and the Non-local network
("Rethinking Atrous Convolution for Semantic Image Segmentation", https://arxiv.org/abs/1706.05587).
timm turns strides into dilation with one ``output_stride`` argument; the first block of a
dilated stage keeps the previous stage's dilation, exactly like mmsegmentation's
``contract_dilation=True``. timm ``resnet50c`` / ``resnet101c`` (deep 3x3 stem, strided 1x1
downsample) are mmsegmentation's ``ResNetV1c``, the reference backbone of the context heads.

Any timm model that supports ``features_only`` and ``output_stride`` works; the names in
``TESTED_BACKBONES`` are the ones our tests and the mmseg conversion cover.

Weights:
    * ``None``: random init.
    * ``'imagenet'``: timm's default pretrained weights (downloaded or taken from the HF cache);
      offline without a cache this raises an error telling you to pass a local file.
    * ``'open-mmlab'`` (``resnet50c`` / ``resnet101c``): mmcv's ImageNet ResNetV1c weights, the starting point of
      every mmseg R50/R101 recipe (:mod:`seg.models.pretrained`), downloaded once into the torch hub cache and
      verified against the SHA-256 prefix in their file name.
    * a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file holding a timm state dict of
      the same model (classifier keys are ignored). Loading is strict: any other missing or
      unexpected key is an error (timm's own ``features_only`` loading only logs them, which would
      silently leave layers at random init).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from .checkpoint import load_strict
from .safe_load import read_state_dict

__all__ = [
    "TESTED_BACKBONES",
    "TimmBackbone",
    "check_name",
    "create_backbone",
    "imagenet_weights_error",
    "load_weights_file",
    "resolve_weights",
]

# Names covered by tests / mmseg conversion. Any other timm model with features_only + output_stride works too.
TESTED_BACKBONES: tuple[str, ...] = (
    "resnet50c",
    "resnet101c",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet50d",
    "resnet101d",
    "resnet10t",
)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class TimmBackbone(nn.Module):
    """A timm ``features_only`` network returning its last four feature maps (stages 1 to 4).

    Most heads read stage 4 (and the auxiliary head stage 3); DeepLabV3+ also reads stage 1, ANN
    stages 3 + 4, UPerNet all four (``in_stages`` of each head class).

    Args:
        name: timm model name, e.g. ``'resnet101c'``.
        output_stride: 8 or 16 (dilated last stages); 32 leaves the network undilated.
        weights: ``None``, ``'imagenet'``, ``'open-mmlab'`` or a path to a local weight file (see module docstring).
        model_kwargs: extra timm constructor arguments, e.g. ``dict(layers=(1, 1, 2, 2),
            channels=(8, 16, 32, 64), stem_width=8)`` for a tiny ResNet.

    Attributes:
        channels: channels of the returned feature maps, ``[stage1, stage2, stage3, stage4]``.
        reductions: their strides w.r.t. the input, e.g. ``[4, 8, 8, 8]`` at output stride 8,
            ``[4, 8, 16, 32]`` at 32 (undilated).
        body: the timm ``FeatureListNet``; its state-dict keys are timm's (``conv1``, ``layer1.0`` ...).
    """

    def __init__(
        self,
        name: str,
        output_stride: Literal[8, 16, 32] = 8,
        weights: str | Path | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        check_name(name)
        self.name = name
        self.output_stride = output_stride
        kwargs = dict(model_kwargs or {})
        kwargs.update(features_only=True, out_indices=(-4, -3, -2, -1))
        if output_stride != 32:
            kwargs["output_stride"] = output_stride

        open_mmlab = isinstance(weights, str) and weights.lower() == "open-mmlab"
        if open_mmlab:
            from .pretrained import open_mmlab_weights

            mmcv_file = open_mmlab_weights(name)  # before the build: an unknown pairing or offline fails at once
        pretrained, weights_path = resolve_weights(None if open_mmlab else weights)
        try:
            self.body = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as err:  # e.g. a model without output_stride support
            raise ValueError(
                f"timm model {name!r} cannot be built with {kwargs}: {err}. Backbones need "
                "features_only and output_stride support (e.g. the ResNet family)."
            ) from err
        except (OSError, RuntimeError, ValueError) as err:
            if not pretrained:
                raise
            raise imagenet_weights_error(name, err) from err
        if weights_path is not None:
            load_weights_file(self.body, weights_path)
        if open_mmlab:
            from .pretrained import load_mmcv_resnet

            load_mmcv_resnet(self.body, mmcv_file)

        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> ``[stage1 (B, C1, H/r1, W/r1), ..., stage4 (B, C4, H/r4, W/r4)]``."""
        return self.body(x)


def create_backbone(
    name: str,
    output_stride: Literal[8, 16, 32] = 8,
    weights: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> TimmBackbone:
    """Build a :class:`TimmBackbone` (see its Args)."""
    return TimmBackbone(name, output_stride=output_stride, weights=weights, model_kwargs=model_kwargs)


def resolve_weights(weights: str | Path | None) -> tuple[bool, Path | None]:
    """``(pretrained, local file)`` for a ``weights`` value: ``None``, ``'imagenet'`` (timm's download) or an
    existing weight file; anything else raises a ``ValueError`` saying what is accepted."""
    if weights is None:
        return False, None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return True, None
    path = Path(weights).expanduser()
    if path.suffix.lower() not in WEIGHT_SUFFIXES or not path.is_file():
        raise ValueError(
            f"weights={str(weights)!r} is neither None, 'imagenet' nor an existing weight file "
            f"({', '.join(WEIGHT_SUFFIXES)}); 'open-mmlab' (mmcv's ImageNet ResNetV1c) is for the native heads on "
            "resnet50c / resnet101c."
        )
    return False, path


def imagenet_weights_error(name: str, err: BaseException) -> RuntimeError:
    """The error for ImageNet weights that could not be loaded (offline, no cache): what to do instead."""
    return RuntimeError(
        f"Could not load timm's ImageNet weights for {name!r} ({type(err).__name__}: {err}). "
        "This machine is probably offline and the weights are not in the Hugging Face cache. "
        f"Download them elsewhere (timm.create_model({name!r}, pretrained=True) then "
        "torch.save(model.state_dict(), 'file.pth')) and pass `weights: /path/to/file.pth` "
        "(.pth or .safetensors), or use `weights: null` for random init."
    )


def check_name(name: str) -> None:
    """Raise a ``ValueError`` naming the tested backbones (and close timm names) for an unknown timm model."""
    if name in TESTED_BACKBONES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    raise ValueError(
        f"Unknown backbone {name!r}. Tested backbones: {', '.join(TESTED_BACKBONES)}; any timm model "
        "with features_only and output_stride support also works (see timm.list_models())."
        + (f" Did you mean: {', '.join(close)}?" if close else "")
    )


def load_weights_file(body: nn.Module, path: str | Path) -> None:
    """Strictly load a timm state dict file into a ``features_only`` network.

    Keys of modules that ``features_only`` dropped (the classifier ``fc``, ``head``, final norms ...)
    are ignored; any other missing, unexpected or mis-shaped key raises a ``ValueError`` listing them.
    """
    path = Path(path)
    state = read_state_dict(path, what="backbone weights")  # safe read: never runs code from the file
    kept_roots = {k.split(".")[0] for k in body.state_dict()}  # submodules and top-level tensors (ViT's cls_token)
    state = {k: v for k, v in state.items() if k.split(".")[0] in kept_roots}
    load_strict(
        body,
        state,
        f"backbone weights {path}",
        hint="Pass a state dict of the same timm model (same name and constructor arguments).",
    )
