"""``weights: open-mmlab``: the ImageNet ResNetV1c weights every mmseg R50/R101 recipe starts from.

mmseg's configs initialise the backbone from ``open-mmlab://resnet50_v1c`` / ``open-mmlab://resnet101_v1c``, which
mmcv's URL table resolves to the files in :data:`OPEN_MMLAB_URLS`. They are bare state dicts of mmcv's
``ResNetV1c`` (``stem.*``, ``layer1..4.*``, and the ImageNet classifier ``fc.*``, which the segmentation backbone
does not use). :func:`load_mmcv_resnet` maps their keys onto timm's ``resnet50c`` / ``resnet101c`` with the
backbone renames of the mmseg conversion (:data:`seg.models.mmseg_keys.MMSEG_RENAMES`, one mapping for both) and loads
them strictly: every backbone tensor of the file is used and none of the network is missing.
tests/test_pretrained.py checks the features against mmseg's own ``ResNetV1c`` loaded from the same file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_strict
from .mmseg_keys import convert_mmseg_state_dict
from .safe_load import read_state_dict

__all__ = ["OPEN_MMLAB", "OPEN_MMLAB_URLS", "load_mmcv_resnet", "mmcv_resnet_to_timm", "open_mmlab_weights"]

OPEN_MMLAB = "open-mmlab"
#: timm name -> mmcv's ``open-mmlab://resnet{50,101}_v1c`` file (SHA-256 prefix in the name)
OPEN_MMLAB_URLS: dict[str, str] = {
    "resnet50c": "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    "resnet101c": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
}
_CLASSIFIER = ("fc.", "head.fc.")  # the ImageNet classifier: not part of a segmentation backbone


def mmcv_resnet_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmcv ``ResNetV1c`` keys (``stem.7.weight``, ``layer3.1.conv2.weight``; an mmcls ``backbone.`` prefix is
    accepted) -> timm ``resnet50c`` keys (``bn1.weight``, ``layer3.1.conv2.weight``); the classifier is dropped."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if key.startswith(_CLASSIFIER):
            continue
        out[key] = value
    renamed = convert_mmseg_state_dict({f"backbone.{k}": v for k, v in out.items()})
    return {k.removeprefix("backbone.body."): v for k, v in renamed.items()}


def load_mmcv_resnet(body: nn.Module, path: str | Path) -> None:
    """Strictly load an mmcv ``ResNetV1c`` weight file into a timm ``features_only`` ResNet (``TimmBackbone.body``).

    BatchNorm ``num_batches_tracked`` counters absent from older files start at 0 (they do not change any
    output); any other missing, unexpected or mis-shaped key raises a ``CheckpointError`` listing them."""
    state = mmcv_resnet_to_timm(read_state_dict(path, what="open-mmlab backbone weights"))
    for key, value in body.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    load_strict(
        body,
        state,
        f"open-mmlab backbone weights {path}",
        hint="weights: open-mmlab is mmcv's ResNetV1c: use it with backbone resnet50c / resnet101c at their "
        "standard widths.",
    )


def open_mmlab_weights(name: str) -> Path:
    """The verified local file of mmcv's ImageNet weights for timm backbone ``name`` (downloaded once into the
    torch hub cache; ``SEG_ZOO_URL_PREFIX`` replaces the URL's folder: :func:`seg.models.download.mirrored`)."""
    from .download import download, mirrored

    if name not in OPEN_MMLAB_URLS:
        raise ValueError(
            f"weights={OPEN_MMLAB!r} is mmcv's ImageNet ResNetV1c, for backbone {' or '.join(OPEN_MMLAB_URLS)}; "
            f"backbone {name!r} takes weights: imagenet (timm's), a local file or null."
        )
    return download(mirrored(OPEN_MMLAB_URLS[name]), hint="Keep weights: open-mmlab: it reads the file from there.")
