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
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn, Optional, Sequence

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace

from seg.command_line import (
    HELP_ALL,
    UsageError,
    check_checkpoint_path,
    check_flags,
    help_screen,
    normalize_argv,
    usage_exit,
)
from seg.data import SegDataModule
from seg.loading import ModelInfo, load_model, read_info
from seg.models.safe_load import CheckpointError

from .module import SegmentationModule

__all__ = [
    "ToolError",
    "build_module",
    "cpu_native_bf16",
    "optimize_for",
    "use_bf16",
    "parse_tool_args",
    "tool_parser",
]

PAIRS = ("--crop_size", "--stride")  # (H, W) options: [H,W] values (two bare numbers: see seg.command_line)


class ToolError(ValueError):
    """A user error of a tool's arguments (the message says what to pass instead)."""


class ToolParser(ArgumentParser):
    """jsonargparse's parser with the convention's two-line errors: ``error: ...`` and where the options are
    (jsonargparse's own tip names the module file, ``evaluate.py --help``, which is no command)."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        usage_exit(UsageError(message.strip(), f"the options: {self.prog} --help (all of them: --help_all)"))


def tool_parser(
    prog: str, description: str, usage: str, add_arguments: Callable[[ArgumentParser], None], trainer: bool = True
) -> ArgumentParser:
    """The parser: ``--ckpt``, ``--config``, the inference options, the tool's own arguments (``add_arguments``),
    then the ``--data.*`` and (``trainer``) ``--trainer.*`` sections, in that order in ``--help_all``."""
    parser = ToolParser(prog=prog, description=description, usage=usage)
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
        help="test-time scale factors of the original image size (mmseg TestTimeAug), e.g. =[0.5,0.75,1.0,1.25,1.5]",
    )
    parser.add_argument("--flip", type=Optional[bool], default=None, help="add horizontal flips")
    parser.add_argument("--crop_size", type=Optional[tuple[int, int]], default=None, help="slide crop, =[H,W]")
    parser.add_argument("--stride", type=Optional[tuple[int, int]], default=None, help="slide stride, =[H,W]")
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
        help="on CPU: bf16 weights and autocast, about 2x faster on CPUs with native bf16 (AVX512-BF16 or AMX); "
        "elsewhere ~8x slower, so seg runs fp32 there and says so (SEG_FORCE_BF16=1 keeps bf16); logits change by "
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


INFERENCE_HELP = [
    "# inference (default: the checkpoint's settings)",
    "--mode whole|slide",
    "--scales =[S,...]",
    "--flip true|false",
    "--crop_size =[H,W]",
    "--stride =[H,W]",
    "--bf16 true|false",
]
HELP_TEXTS = {
    "--ckpt": "the checkpoint: train.py's best.ckpt / last.ckpt, or a seg.convert output",
    "--config": "a train.py YAML: its data section replaces the checkpoint's data settings",
    "--scales": "test-time scale factors of the original image size (mmseg TestTimeAug)",
    "--bf16": "CPU bf16 (~2x faster with AVX512-BF16 or AMX; without them seg runs fp32 and says so)",
    "--data.root": "where the data is (default: where the checkpoint's training data was)",
    "--data.dataset": "the dataset type",
    "--data.classes": "class names, =[a,b,...] (folder datasets)",
    "--data.num_workers": "DataLoader workers",
    "--data.val_batch_size": "images per batch (1: no padding, mmseg's choice)",
    "--trainer.devices": "number of devices (processes)",
    "--trainer.accelerator": "where to run",
    "--trainer.strategy": "ddp with several devices (the numbers do not change)",
    "--trainer.precision": "default: bf16-mixed on a GPU with bf16, else 32-true",
    "--crop_size": "slide window size",
    "--stride": "slide window step",
}


def help_rows(parser: ArgumentParser, specs: Sequence[str], texts: dict[str, str]) -> list[tuple[str, str]]:
    """``--help`` rows for ``specs``: ``"--flag METAVAR"`` (the flag's text from ``texts``, else its ``help``),
    ``"# heading"``, or a positional's name. Every flag must be one of ``parser``'s (a KeyError otherwise)."""
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    by_flag.update({a.dest: a for a in parser._actions if not a.option_strings})
    rows = []
    for spec in specs:
        if spec.startswith("#"):
            rows.append(("", spec[1:].strip() + ":"))
            continue
        flag = re.match(r"[^ =]+", spec).group()
        metavar = spec[len(flag) :].strip()
        action = by_flag[flag]
        shown = ", ".join(o for o in action.option_strings if not o.endswith("+")) or flag
        text = texts.get(flag) or re.sub(r"\s*\(type: .*", "", action.help or "").replace("``", "")
        rows.append((shown + ("" if metavar.startswith("=") or not metavar else " ") + metavar, text))
    return rows


def short_help(parser: ArgumentParser, specs: Sequence[str], texts: dict[str, str]) -> str:
    """The tool's ``--help``: its usage, description and ``specs`` options; ``--help_all`` lists every option."""
    rows = help_rows(parser, specs, {**HELP_TEXTS, **texts})
    rows += [("-h, --help", "this help"), ("--help_all", "every option (all --data.* keys, --optimize, ...)")]
    footer = (
        "Flags are spelt with underscores (--crop_size); lists and (H, W) sizes are list values (--crop_size="
        "[512,1024]). The model and its classes, palette, normalisation and evaluation settings come from --ckpt."
    )
    return help_screen(parser.usage, parser.description or "", rows, footer)


def parse_tool_args(
    parser: ArgumentParser,
    args: Optional[list[str]] = None,
    help_specs: Sequence[str] = (),
    help_texts: Optional[dict[str, str]] = None,
    command_line: Optional[bool] = None,
) -> tuple[Namespace, ModelInfo | None]:
    """Parse ``args`` (``None``: ``sys.argv[1:]``) with the checkpoint's data settings as the ``--data.*`` defaults
    (replaced by ``--config``'s data section). Returns the namespace and the checkpoint's :class:`ModelInfo`.

    Before the checkpoint is read: old spellings are rewritten (:func:`seg.command_line.normalize_argv`),
    ``--help`` prints the ``help_specs`` options and ``--help_all`` every one (both exit 0), and an unknown flag or
    a missing / folder ``--ckpt`` ends the process with two lines (what is wrong, what to type; exit status 2).
    A bad checkpoint or data section is raised when ``args`` is given (unless ``command_line``), else also ends
    with an ``error:`` line."""
    command_line = args is None if command_line is None else command_line
    argv = list(sys.argv[1:] if args is None else args)
    flags = {s for a in parser._actions for s in a.option_strings}
    argv = normalize_argv(argv, flags, parser.prog, PAIRS)
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(short_help(parser, help_specs, help_texts or {}))
        raise SystemExit(0)
    if any(a in HELP_ALL for a in argv):
        parser.print_help()
        raise SystemExit(0)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--ckpt")
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(argv)
    try:
        check_flags(argv, flags, parser.prog)
        if known.ckpt is not None:
            check_checkpoint_path(known.ckpt, parser.prog, argv)
    except UsageError as err:
        usage_exit(err)
    info = None
    if known.ckpt is not None:
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


FORCE_BF16 = "SEG_FORCE_BF16"  # =1: --bf16 on CPU even without native bf16


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> Optional[set[str]]:
    """The CPU feature flags of Linux's ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); None elsewhere."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_native_bf16(flags: Optional[set[str]] = None, capability: Optional[str] = None) -> tuple[Optional[bool], str]:
    """Whether this CPU computes bf16 natively, so that ``--bf16`` pays off: ``(native, what)``.

    x86 needs AVX512-BF16 or AMX-BF16 (cpuinfo ``avx512_bf16`` / ``amx_bf16``) and PyTorch's AVX512 kernels
    (``torch.backends.cpu.get_cpu_capability()``); without them bf16 is emulated, measured 8.5x slower than fp32
    (docs/benchmarks.md). Arm needs the ``bf16`` feature. ``native`` is None where the flags cannot be read (not
    Linux): seg then does what was asked. ``flags`` / ``capability`` default to this machine's (tests pass them)."""
    flags = _cpuinfo_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if flags is None:
        return None, f"CPU features unknown (PyTorch kernels: {capability})"
    if "sse2" in flags:  # x86
        native = bool({"avx512_bf16", "amx_bf16"} & flags) and capability.startswith("AVX512")
        have = ", ".join(sorted({"avx512_bf16", "amx_bf16"} & flags)) or "neither avx512_bf16 nor amx_bf16"
        return native, f"{have}; PyTorch kernels: {capability}"
    return "bf16" in flags, f"{'bf16' if 'bf16' in flags else 'no bf16'} feature; PyTorch kernels: {capability}"


def use_bf16(device: Any, bf16: bool) -> bool:
    """``--bf16`` as it will run on ``device``: on a CPU without native bf16 it falls back to fp32 with one line on
    stderr saying why, unless ``SEG_FORCE_BF16=1``."""
    if not bf16 or torch.device(device).type != "cpu" or os.environ.get(FORCE_BF16, "") == "1":
        return bf16
    native, what = cpu_native_bf16()
    if native is False:
        print(
            f"--bf16: this CPU has no native bf16 ({what}), where bf16 runs ~8x slower than fp32: running fp32 "
            f"(set {FORCE_BF16}=1 to keep bf16)",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def optimize_for(module: SegmentationModule, device: Any, optimize: bool, bf16: bool) -> bool:
    """Applies ``--optimize`` / ``--bf16`` to ``module.model`` for inference on ``device`` (CPU only: on GPU the
    trainer's precision and cuDNN decide). Returns whether bf16 is used (:func:`use_bf16`)."""
    from seg.models.optimize import optimize_for_inference

    device = torch.device(device)
    bf16 = use_bf16(device, bf16)
    if device.type != "cpu" or not (optimize or bf16):
        return bf16
    module.model = optimize_for_inference(
        module.model, device, fuse_bn=optimize, channels_last=optimize, bf16=bf16, inplace=True
    )
    return bf16


def tta_val_mode(hparams: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """mmseg 1.x ``TestTimeAug`` scales the *original* image: with several scales or flip the eval pipeline hands
    over the original image (``data.val_mode='full'``) and the model resizes it to each scale's size."""
    from seg.models.inference import is_tta

    if is_tta(hparams.get("eval_scales", (1.0,)), hparams.get("eval_flip", False)) and data.get("val_mode") != "full":
        return {**data, "val_mode": "full"}
    return data
