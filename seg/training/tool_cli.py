"""The command line of ``seg.evaluate`` and ``seg.predict``: a checkpoint, the inference options, and the data
settings, with the checkpoint as the source of truth.

* The model, its classes, palette, normalisation and evaluation settings come from ``--ckpt`` alone
  (:func:`seg.load_model`): a checkpoint copied anywhere works, no run folder is read.
* The data settings (``--data.*``) default to those the checkpoint was trained with (train.py checkpoints store
  them); ``--config FILE`` replaces them with the ``data`` section of a train.py YAML (nothing else of the file is
  read, and nothing in it is imported: it is read with ``yaml.safe_load``), and ``--data.KEY=V`` flags override
  both.
* ``--trainer.*`` takes the few Trainer settings an evaluation needs (devices, strategy, accelerator, precision).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace

from seg.data import SegDataModule
from seg.loading import ModelInfo, load_model, read_info
from seg.models.safe_load import CheckpointError

from .module import SegmentationModule

__all__ = ["ToolError", "build_module", "optimize_for", "parse_tool_args", "tool_parser"]


class ToolError(ValueError):
    """A user error of a tool's arguments (the message says what to pass instead)."""


def tool_parser(
    description: str, usage: str, add_arguments: Callable[[ArgumentParser], None], trainer: bool = True
) -> ArgumentParser:
    """The parser: ``--ckpt``, ``--config``, the inference options, the tool's own arguments (``add_arguments``),
    then the ``--data.*`` and (``trainer``) ``--trainer.*`` sections, in that order in ``--help``."""
    parser = ArgumentParser(description=description, usage=usage)
    parser.add_argument(
        "--ckpt",
        type=str,
        required=True,
        help="a seg checkpoint (train.py's, seg.convert output), mmseg:<name> or a URL",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Optional[str],
        default=None,
        help="a train.py YAML whose data section replaces the checkpoint's data settings (only that section is read)",
    )
    parser.add_argument(
        "--mode",
        type=Optional[Literal["whole", "slide"]],
        default=None,
        help="inference mode (default: the checkpoint's)",
    )
    parser.add_argument(
        "--scales",
        type=Optional[list[float]],
        default=None,
        help="test-time scale factors of the original image size (mmseg TestTimeAug), e.g. [0.5,0.75,1.0,1.25,1.5,1.75]",
    )
    parser.add_argument("--flip", type=Optional[bool], default=None, help="add horizontal flips")
    parser.add_argument("--crop_size", type=Optional[tuple[int, int]], default=None, help="slide crop (H, W)")
    parser.add_argument("--stride", type=Optional[tuple[int, int]], default=None, help="slide stride (H, W)")
    parser.add_argument(
        "--optimize",
        type=bool,
        default=True,
        help="on CPU: BatchNorm folded into the convs, channels_last, F.interpolate logit resize, dilated depthwise "
        "convs padded explicitly (seg.models.optimize_for_inference; same predictions to fp32 rounding)",
    )
    parser.add_argument(
        "--bf16",
        type=bool,
        default=False,
        help="on CPU: bf16 weights and autocast, about 2x faster on CPUs with AVX512-BF16 or AMX; logits change by "
        "bf16 rounding (on GPU use --trainer.precision=bf16-mixed)",
    )
    add_arguments(parser)
    parser.add_class_arguments(SegDataModule, "data", fail_untyped=False, sub_configs=False)
    if trainer:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        parser.add_argument("--trainer.accelerator", type=str, default="auto", help="cpu, gpu, auto")
        parser.add_argument("--trainer.devices", type=Any, default=1, help="number of devices (processes), or a list")
        parser.add_argument("--trainer.strategy", type=str, default="auto", help="auto, or ddp with several devices")
        parser.add_argument("--trainer.num_nodes", type=int, default=1, help="machines (with torchrun or SLURM)")
        parser.add_argument(
            "--trainer.precision", type=str, default="bf16-mixed" if bf16 else "32-true", help="32-true, bf16-mixed"
        )
        parser.add_argument("--trainer.enable_progress_bar", type=bool, default=True, help="show a progress bar")
    return parser


def config_data_section(path: str | Path) -> dict[str, Any]:
    """The ``data`` section of a train.py YAML, read with ``yaml.safe_load`` (nothing in the file is imported)."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"--config {path} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data") or {}, dict):
        raise ToolError(f"--config {path}: expected a train.py YAML with a 'data:' mapping")
    return dict(cfg.get("data") or {})


def _data_defaults(parser: ArgumentParser, info: ModelInfo, config: Optional[str]) -> dict[str, Any]:
    data = dict(info.data)
    if config is not None:
        data = config_data_section(config)
    known = {a.dest.split(".", 1)[1] for a in parser._actions if a.dest.startswith("data.")}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"--config {config}" if config is not None else f"the data settings of {info.path}"
        raise ToolError(f"{where}: unknown data keys {unknown}; the data section takes: {', '.join(sorted(known))}")
    return {f"data.{k}": v for k, v in data.items()}


def parse_tool_args(parser: ArgumentParser, args: Optional[list[str]] = None) -> tuple[Namespace, ModelInfo | None]:
    """Parse ``args`` (``None``: ``sys.argv[1:]``) with the checkpoint's data settings as the ``--data.*`` defaults
    (replaced by ``--config``'s data section). Returns the namespace and the checkpoint's :class:`ModelInfo`
    (None only for ``--help``). From the command line a user error ends the process with one ``error:`` line."""
    command_line = args is None
    argv = list(sys.argv[1:] if args is None else args)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--ckpt")
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(argv)
    info = None
    if known.ckpt is not None and not any(a in ("-h", "--help") for a in argv):
        try:
            info = read_info(known.ckpt)
            parser.set_defaults(_data_defaults(parser, info, known.config))
        except (CheckpointError, FileNotFoundError, ToolError) as err:
            if not command_line:
                raise
            parser.error(str(err))
    ns = parser.parse_args(argv)
    return ns, info


def data_given(args: Optional[list[str]]) -> bool:
    """Whether the command line sets data settings itself (``--config`` or ``--data.*``)."""
    argv = list(sys.argv[1:] if args is None else args)
    return any(a in ("-c", "--config") or a.startswith(("--config=", "--data.")) for a in argv)


def module_hparams(ns: Namespace, info: ModelInfo) -> dict[str, Any]:
    """The SegmentationModule arguments of the checkpoint, with the evaluation options of the command line."""
    hp = dict(info.hparams)
    for key, value in (
        ("eval_mode", ns.mode),
        ("eval_scales", None if ns.scales is None else tuple(ns.scales)),
        ("eval_flip", ns.flip),
        ("eval_crop_size", None if ns.crop_size is None else tuple(ns.crop_size)),
        ("eval_stride", None if ns.stride is None else tuple(ns.stride)),
    ):
        if value is not None:
            hp[key] = value
    hp["num_classes"] = info.num_classes
    return hp


def build_module(ckpt: str | Path, hparams: dict[str, Any] | None = None) -> tuple[SegmentationModule, ModelInfo]:
    """The checkpoint's model (:func:`seg.load_model`) in a :class:`SegmentationModule` for evaluation, with the
    checkpoint's settings updated by ``hparams`` (e.g. ``eval_mode``)."""
    model, info = load_model(ckpt)
    module = SegmentationModule.from_model(model, **{**info.hparams, **(hparams or {})})
    module.class_names = list(info.classes)
    return module.eval(), info


def optimize_for(module: SegmentationModule, device: Any, optimize: bool, bf16: bool) -> None:
    """Applies ``--optimize`` / ``--bf16`` to ``module.model`` for inference on ``device`` (CPU only: on GPU the
    trainer's precision and cuDNN decide)."""
    from seg.models.optimize import optimize_for_inference

    device = torch.device(device)
    if device.type != "cpu" or not (optimize or bf16):
        return
    module.model = optimize_for_inference(
        module.model, device, fuse_bn=optimize, channels_last=optimize, bf16=bf16, inplace=True
    )


def tta_val_mode(hparams: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """mmseg 1.x ``TestTimeAug`` scales the *original* image: with several scales or flip the eval pipeline hands
    over the original image (``data.val_mode='full'``) and the model resizes it to each scale's size."""
    from seg.models.inference import is_tta

    if is_tta(hparams.get("eval_scales", (1.0,)), hparams.get("eval_flip", False)) and data.get("val_mode") != "full":
        return {**data, "val_mode": "full"}
    return data
