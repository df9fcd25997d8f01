"""The settings an exported model carries, so that it can be run without its checkpoint or config.

ONNX keeps them in ``metadata_props`` (string key -> string value), TorchScript and ``torch.export``
files as an extra file ``seg_deploy.json``. Keys are ``seg.<name>``, values JSON:

==================  =============================================================================
num_classes         int
classes             class names (list of str)
palette             RGB triple per class (list of [r, g, b])
mean, std           normalisation, 0-255 RGB: ``x = (rgb - mean) / std``
normalize_baked     true: the input is uint8 RGB (B, H, W, 3) and the graph normalises it;
                    false: the input is float32 (B, 3, H, W), already normalised by the caller
output              ``"logits"`` (float32 (B, C, H, W)) or ``"labels"`` (int64 (B, H, W), ``--argmax``)
dynamic             true: batch, H and W are free; false: only ``traced_size`` (and its batch) works
traced_size         [H, W] the graph was traced at
test_scale          [H, W] keep-ratio resize of every image before inference (the data config's
                    ``data.scale``, evaluation transform), or null for none. Files written before it have
                    ``eval_resize`` [W, H] instead; :func:`decode` turns that into ``test_scale``.
eval_mode           ``"whole"`` or ``"slide"``
crop_size, stride   sliding-window crop and stride, [H, W]
scales, flip        test-time scales and horizontal flip (probabilities averaged)
model               the ``build_model`` arguments (for information)
==================  =============================================================================
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["EXTRA_FILE", "REQUIRED", "decode", "encode"]

PREFIX = "seg."
EXTRA_FILE = "seg_deploy.json"
REQUIRED = (
    "num_classes",
    "palette",
    "mean",
    "std",
    "normalize_baked",
    "output",
    "dynamic",
    "traced_size",
    "test_scale",
    "eval_mode",
    "crop_size",
    "stride",
    "scales",
    "flip",
)


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """``{'seg.<key>': json}`` for ONNX ``metadata_props``."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"deploy metadata lacks {missing}")
    return {PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode(props: dict[str, str], source: str) -> dict[str, Any]:
    """Inverse of :func:`encode`; a clear error when ``source`` was not written by ``seg.export``."""
    meta = {k[len(PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
    if "eval_resize" in meta and "test_scale" not in meta:  # exported before sizes were (H, W) everywhere
        old = meta.pop("eval_resize")
        meta["test_scale"] = None if old is None else [old[1], old[0]]
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{source}: no seg metadata {missing} (export the model with `python -m seg.export`)")
    return meta
