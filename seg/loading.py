"""``seg.load_model(path) -> (model, info)``: the one function that turns a checkpoint file into a model.

Every command (``seg.evaluate``, ``seg.predict``, ``seg.compare``, ``seg.export``), ``model.init_from`` and the
Python API read checkpoints through here, so a file copied out of its run folder works everywhere, and a
checkpoint means the same thing to every command. Reading never runs code from the file
(:mod:`seg.models.safe_load`).

Three kinds of file are read:

* a seg checkpoint (train.py's ``best.ckpt`` / ``last.ckpt``, ``seg.convert`` output): the ``seg`` entry
  (:mod:`seg.models.checkpoint`) rebuilds the model and carries its classes, palette, mean/std and evaluation
  settings;
* a train.py checkpoint written before the ``seg`` entry existed: rebuilt from the ``hyper_parameters`` and
  ``datamodule_hyper_parameters`` Lightning stored (class names from the data settings where they can be
  resolved);
* a ``seg.convert`` output written before it (``seg_model`` entry): the build arguments; class names of the
  benchmark with that many classes (19 Cityscapes, 150 ADE20K), else generic ones.

A source may also be ``mmseg:<name>`` (mmseg's model zoo) or an ``http(s)://`` URL: :func:`local_checkpoint`
downloads, verifies, converts and caches it (:mod:`seg.zoo.hub`) and the file is then read as above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from seg.command_line import REMOTE_CHECKPOINTS  # mmseg:<name>, http(s)://: resolved by seg.zoo.hub
from seg.data.meta import dataset_meta
from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg.models import build_model
from seg.models.checkpoint import META_KEY, check_finite, checkpoint_meta, load_strict, network_state
from seg.models.inference import EVAL_DEFAULTS
from seg.models.safe_load import CheckpointError, read_checkpoint

__all__ = ["ModelInfo", "dataset_meta", "load_model", "local_checkpoint", "read_info"]

# SegmentationModule arguments that describe the network (the rest are training or evaluation settings)
_NETWORK_ARGS = ("backbone", "head", "num_classes", "output_stride", "aux", "backbone_kwargs")


@dataclass
class ModelInfo:
    """What a checkpoint says about its model, besides the weights.

    Attributes:
        path: the file.
        build: :func:`seg.models.build_model` arguments (``build_model(**build)`` rebuilds the network).
        classes, palette: class names and their RGB colours, one per output channel.
        mean, std: input normalisation (0-255 RGB): the network sees ``(rgb - mean) / std``.
        ignore_index: the label that is never scored.
        eval: evaluation settings: ``mode`` ('whole' | 'slide'), ``crop_size`` and ``stride`` (H, W) of slide
            windows, test-time ``scales`` and ``flip``.
        test_scale: (H, W) the image is resized to fit (keeping its aspect ratio) before the network, or None
            (the image as it is).
        dataset: the data set it was trained on ('folder', 'cityscapes', 'ade20k'), if known.
        seed: the training run's seed, if known.
        hparams: the ``SegmentationModule`` arguments it was trained with (derived from ``build`` for converted
            checkpoints).
        data: the ``SegDataModule`` arguments it was trained with (empty for converted checkpoints).
        step: the training step it was saved at, if a training checkpoint.
        kind: 'seg' (self-describing), 'legacy train.py' or 'legacy convert'.
    """

    path: Path
    build: dict[str, Any]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255
    eval: dict[str, Any] = field(default_factory=lambda: dict(EVAL_DEFAULTS))
    test_scale: tuple[int, int] | None = None
    dataset: str | None = None
    seed: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    kind: str = "seg"

    @property
    def num_classes(self) -> int:
        return int(self.build["num_classes"])

    @property
    def head(self) -> str:
        return str(self.build["head"])

    @property
    def backbone(self) -> str:
        return str(self.build["backbone"])


def _module_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hp.items() if not k.startswith("_")}  # Lightning's '_instantiator'


def _hparams_from_build(build: dict[str, Any], eval: dict[str, Any]) -> dict[str, Any]:
    """SegmentationModule arguments for a network known by its build arguments only (converted checkpoints)."""
    head_kwargs = {k: v for k, v in build.items() if k not in (*_NETWORK_ARGS, "aux_channels", "weights")}
    return {
        **{k: build[k] for k in _NETWORK_ARGS if k in build},
        "head_kwargs": head_kwargs,
        "eval_mode": eval["mode"],
        "eval_crop_size": tuple(eval["crop_size"]),
        "eval_stride": tuple(eval["stride"]),
        "eval_scales": tuple(eval["scales"]),
        "eval_flip": bool(eval["flip"]),
    }


def _legacy_meta(ckpt: dict[str, Any], path: Path) -> tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]:
    """(meta, kind, module hparams, data hparams) of a checkpoint written before the ``seg`` entry existed."""
    from seg.data.datamodule import upgrade_data_hparams

    if isinstance(ckpt.get("seg_model"), dict):  # seg.convert output
        build, kind, hp, data, eval = dict(ckpt["seg_model"]), "legacy convert", {}, {}, {}
    elif isinstance(ckpt.get("hyper_parameters"), dict) and "backbone" in ckpt["hyper_parameters"]:  # train.py
        hp = _module_hparams(ckpt["hyper_parameters"])
        data = upgrade_data_hparams(_module_hparams(ckpt.get("datamodule_hyper_parameters") or {}))
        build = {**{k: hp[k] for k in _NETWORK_ARGS if k in hp}, **(hp.get("head_kwargs") or {})}
        kind = "legacy train.py"
        eval = {key: hp[f"eval_{key}"] for key in EVAL_DEFAULTS if f"eval_{key}" in hp}
    else:
        raise CheckpointError(
            f"{path} is not a seg checkpoint: it has neither a '{META_KEY}' entry (train.py, seg.convert) nor the "
            "hyper-parameters of an older train.py checkpoint. Convert mmseg checkpoints with "
            "`python -m seg.convert mmseg ...` first."
        )
    served = dataset_meta(data.get("dataset") if data else None, int(build["num_classes"]), data)
    meta = checkpoint_meta(
        build,
        served["classes"],
        served["palette"],
        mean=data.get("mean", IMAGENET_MEAN),
        std=data.get("std", IMAGENET_STD),
        eval=eval,
        test_scale=served["test_scale"] if data else None,
        dataset=served["dataset"] if data else None,
    )
    return meta, kind, hp, data


def _info(ckpt: Any, path: Path) -> ModelInfo:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a checkpoint (a dict with 'state_dict'), got {type(ckpt).__name__}")
    meta = ckpt.get(META_KEY)
    if isinstance(meta, dict) and isinstance(meta.get("model"), dict):
        kind = "seg"
        hp = _module_hparams(ckpt.get("hyper_parameters") or {})
        data = _module_hparams(ckpt.get("datamodule_hyper_parameters") or {})
        if "classes" not in meta:  # saved with the build arguments only (save_checkpoint(model, path))
            served = dataset_meta(None, int(meta["model"]["num_classes"]))
            meta = checkpoint_meta(meta["model"], served["classes"], served["palette"], IMAGENET_MEAN, IMAGENET_STD)
    else:
        meta, kind, hp, data = _legacy_meta(ckpt, path)
    eval = {**EVAL_DEFAULTS, **meta["eval"]}
    return ModelInfo(
        path=path,
        build=dict(meta["model"]),
        classes=list(meta["classes"]),
        palette=[tuple(int(v) for v in c) for c in meta["palette"]],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        ignore_index=int(meta["ignore_index"]),
        eval=eval,
        test_scale=None if meta["test_scale"] is None else tuple(meta["test_scale"]),
        dataset=meta["dataset"],
        seed=meta["seed"],
        hparams=hp or _hparams_from_build(meta["model"], eval),
        data=data,
        step=ckpt.get("global_step"),
        kind=kind,
    )


def local_checkpoint(source: str | Path) -> Path:
    """The local file of a checkpoint source: a path as it is; ``mmseg:<name>`` (mmseg's model zoo, ``python -m
    seg.zoo list``) or an ``http(s)://`` URL downloaded, verified, converted if it is an mmseg file and cached
    (:func:`seg.zoo.hub.resolve`; raises a ``CheckpointError`` that says how to get the file by hand)."""
    if isinstance(source, str) and source.startswith(REMOTE_CHECKPOINTS):
        from seg.zoo.hub import resolve

        return resolve(source)
    return Path(source)


def read_info(path: str | Path) -> ModelInfo:
    """What :func:`load_model` would say about the checkpoint at ``path`` (a file, ``mmseg:<name>`` or a URL:
    :func:`local_checkpoint`), without building the model."""
    path = local_checkpoint(path)
    return _info(read_checkpoint(path, what="checkpoint"), path)


def load_model(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The model of a seg checkpoint, built and loaded (every weight, strictly), in eval mode, and its
    :class:`ModelInfo`. ``path``: a file, or ``mmseg:<name>`` / an ``http(s)://`` URL (:func:`local_checkpoint`).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable seg checkpoint (the message says which kind of file it is and what to
            do), weights that do not fit the architecture it describes (every key listed), or NaN/Inf weights.
    """
    path = local_checkpoint(path)
    ckpt = read_checkpoint(path, what="checkpoint")
    info = _info(ckpt, path)
    state = network_state(ckpt["state_dict"])
    check_finite(state, str(path))
    model = build_model(**{**info.build, "weights": None})
    load_strict(model, state, str(path), hint=f"The file describes {info.kind} model {info.build}.")
    return model.eval(), info
