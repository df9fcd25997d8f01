"""The seg checkpoint format: the network's weights and what rebuilds and serves it, in one file.

Layout (docs/design.md)::

    {'state_dict': {'model.<SegmentationModel key>': tensor, ...},
     'seg': {'format': 1, 'model': <build_model arguments>, 'classes': [...], 'palette': [[r, g, b], ...],
             'mean': [...], 'std': [...], 'ignore_index': 255, 'test_scale': [H, W] or None,
             'eval': {'mode', 'crop_size', 'stride', 'scales', 'flip'}, 'dataset': ..., 'seed': ...},
     ... (train.py checkpoints also hold Lightning's optimizer, loops, hyper_parameters ...)}

``state_dict`` is what the LightningModule saves (it holds the network as ``self.model``); ``seg`` is written by
train.py (every ``best.ckpt`` / ``last.ckpt``) and by ``seg.convert``, so a checkpoint copied anywhere rebuilds
its model with ``build_model(**ckpt['seg']['model'])`` and serves it with its own classes, normalisation and
evaluation settings. :func:`seg.loading.load_model` is the one reader (older files without ``seg`` included).

Pure torch (no Lightning): strict and partial loading with reports, and atomic saving that refuses NaN/Inf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seg.io import atomic_write

from .inference import EVAL_DEFAULTS
from .safe_load import CheckpointError

__all__ = [
    "FORMAT",
    "META_KEY",
    "PREFIX",
    "NonFiniteError",
    "atomic_save",
    "check_finite",
    "checkpoint_meta",
    "load_matching",
    "load_strict",
    "network_state",
    "non_finite_keys",
    "save_checkpoint",
]

PREFIX = "model."  # network keys in a checkpoint's state_dict
META_KEY = "seg"  # the entry that rebuilds and serves the model
FORMAT = 1


class NonFiniteError(CheckpointError):
    """Weights with NaN/Inf values: refused instead of being saved (or loaded) silently."""


def non_finite_keys(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """Raise :class:`NonFiniteError` naming ``source`` when weights hold NaN/Inf (a diverged run)."""
    bad = non_finite_keys(state)
    if bad:
        raise NonFiniteError(
            f"{source} has NaN/Inf weights in {len(bad)} tensors ({bad[:5]}): it comes from a diverged run; "
            "use an earlier checkpoint"
        )


def network_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's weights of a checkpoint's ``state_dict`` (``model.`` prefix removed); a bare state dict
    without that prefix is returned as it is."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return state


def load_strict(model: nn.Module, state: dict[str, Tensor], source: str, hint: str = "") -> None:
    """Load every tensor, or raise one ``CheckpointError`` listing every missing / unexpected / mis-shaped key
    and ``hint`` (what to check), instead of torch's bare ``RuntimeError``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        args = getattr(model, "build_args", None)
        target = f"build_model({', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else "the model"
        lines = [f"{source} does not fit {target}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys (in the model, not in the checkpoint): {missing}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys (in the checkpoint, not in the model): {unexpected}")
        if wrong:
            lines.append(f"  {len(wrong)} shape mismatches: {wrong}")
        if hint:
            lines.append(f"  {hint}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> dict[str, list[str]]:
    """Load the tensors whose name and shape match ``model``; the rest keep their initialisation.

    Returns ``{'loaded', 'shape_mismatch', 'missing', 'unexpected'}`` key lists (shape mismatches are typically
    the classifiers of a different class count, which stay freshly initialised).
    """
    own = model.state_dict()
    loaded, mismatch = {}, []
    for k, v in state.items():
        if k in own:
            if own[k].shape == v.shape:
                loaded[k] = v
            else:
                mismatch.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
    model.load_state_dict(loaded, strict=False)
    return {
        "loaded": sorted(loaded),
        "shape_mismatch": mismatch,
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
    }


def atomic_save(obj: Any, path: str | Path, require_finite: bool = True) -> Path:
    """``torch.save`` through :func:`seg.io.atomic_write`. With ``require_finite``, a ``state_dict`` (``obj`` or
    ``obj['state_dict']``) holding NaN/Inf raises :class:`NonFiniteError` and nothing is written."""
    if require_finite and isinstance(obj, dict):
        state = obj.get("state_dict", obj)
        bad = non_finite_keys(state) if isinstance(state, dict) else []
        if bad:
            raise NonFiniteError(
                f"refusing to write {path}: {len(bad)} tensors hold NaN/Inf ({bad[:5]}); the run "
                "diverged (lower the learning rate, check the data)"
            )
    return atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_meta(
    build: dict[str, Any],
    classes: list[str],
    palette: list[Any],
    mean: Any,
    std: Any,
    ignore_index: int = 255,
    eval: dict[str, Any] | None = None,
    test_scale: Any = None,
    dataset: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The ``seg`` entry of a checkpoint (see the module docstring), as plain lists, numbers and strings (so the
    file reads with ``weights_only``): ``build`` rebuilds the network, the rest serves it."""
    if len(classes) != int(build["num_classes"]) or len(palette) != len(classes):
        raise ValueError(
            f"{len(classes)} class names and {len(palette)} colours for a {build['num_classes']}-class model"
        )
    settings = {**EVAL_DEFAULTS, **(eval or {})}
    return {
        "format": FORMAT,
        "model": dict(build),
        "classes": [str(c) for c in classes],
        "palette": [[int(v) for v in c] for c in palette],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "ignore_index": int(ignore_index),
        "eval": {
            "mode": str(settings["mode"]),
            "crop_size": [int(v) for v in settings["crop_size"]],
            "stride": [int(v) for v in settings["stride"]],
            "scales": [float(v) for v in settings["scales"]],
            "flip": bool(settings["flip"]),
        },
        "test_scale": None if test_scale is None else [int(v) for v in test_scale],
        "dataset": dataset,
        "seed": None if seed is None else int(seed),
    }


def save_checkpoint(
    model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a self-describing seg checkpoint, atomically.

    Args:
        model: a network built by :func:`seg.models.build_model` (its ``build_args`` rebuild it).
        path: the file to write.
        meta: the ``seg`` entry (:func:`checkpoint_meta`); None records the build arguments only (the loader
            then gives generic class names and ImageNet normalisation).
        extra: further top-level entries (e.g. ``converted_from``).
    """
    build_args = getattr(model, "build_args", None)
    if not build_args:
        raise ValueError("model.build_args is empty: build the model with seg.models.build_model")
    if meta is not None and meta.get("model") != build_args:
        raise ValueError(f"meta describes {meta.get('model')}, the model is {build_args}")
    ckpt = {
        "state_dict": {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        META_KEY: meta if meta is not None else {"format": FORMAT, "model": dict(build_args)},
        **(extra or {}),
    }
    return atomic_save(ckpt, path)
