"""The parser of ``seg.evaluate`` and ``seg.predict``: train.py's config files and dotted overrides, plus ``--ckpt``,
the inference options and each tool's own arguments, which ``--help`` lists first (before the model, data and
trainer sections). Builds a Trainer without loggers or training callbacks; without ``--config`` it reads the
``config.yaml`` of the checkpoint's run directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser

from seg.models import checkpoint
from seg.models.checkpoint import CheckpointError

from .cli import SegCLI, console_callbacks, tta_reads_original_images
from .module import SegmentationModule

__all__ = ["SegToolCLI", "find_run_config", "load_seg_weights"]


def find_run_config(ckpt: str | os.PathLike) -> Optional[Path]:
    """``<run_dir>/config.yaml`` for a checkpoint at ``<run_dir>/checkpoints/*.ckpt``, if it exists."""
    p = Path(ckpt).resolve()
    for cand in (p.parent / "config.yaml", p.parent.parent / "config.yaml"):
        if cand.is_file():
            return cand
    return None


def load_seg_weights(module: SegmentationModule, ckpt: str | os.PathLike) -> None:
    """Strictly loads a seg checkpoint (or ``seg.convert`` output) into ``module.model``, read safely."""
    checkpoint.load_seg_weights(
        module.model,
        ckpt,
        what="--ckpt",
        hint=("Check --config / --model.* against the checkpoint's run config (<run_dir>/config.yaml)."),
    )


class SegToolCLI(SegCLI):
    """The train.py parser (same config files and dotted overrides) for ``seg.evaluate`` / ``seg.predict``:
    adds ``--ckpt``, the inference options and the tool's own arguments; builds a Trainer without loggers or
    training callbacks. Without ``--config``, the ``config.yaml`` of the checkpoint's run dir is used."""

    description = "Evaluate or predict with a seg checkpoint."
    usage = "%(prog)s --ckpt CKPT [-c CONFIG] [options] [--model.KEY=V --data.KEY=V --trainer.KEY=V ...]"

    def __init__(self, args: Optional[list[str]] = None, **kwargs: Any) -> None:
        self._command_line = args is None  # then a bad --ckpt ends the process with one `error:` line
        args = list(sys.argv[1:] if args is None else args)
        if not any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
            ckpt = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--ckpt"), None)
            ckpt = ckpt or next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt=")), None)
            cfg = find_run_config(ckpt) if ckpt else None
            if cfg is not None:
                args = ["--config", str(cfg)] + args
        kwargs.setdefault("save_config_callback", None)
        kwargs.setdefault("parser_kwargs", {"description": self.description, "usage": self.usage})
        super().__init__(args=args, **kwargs)

    def add_tool_arguments(self, parser: LightningArgumentParser) -> None:
        """Hook for the tool's own arguments."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # the tool's own options right after --config, so `--help` shows them before the model/data/trainer sections
        parser = super().init_parser(**kwargs)
        parser.add_argument("--ckpt", type=str, required=True, help="seg checkpoint (or seg.convert output)")
        parser.add_argument(
            "--mode",
            type=Optional[Literal["whole", "slide"]],
            default=None,
            help="inference mode (default: model.eval_mode)",
        )
        parser.add_argument(
            "--scales",
            type=Optional[list[float]],
            default=None,
            help="test-time scale factors of the original image size (mmseg TestTimeAug), "
            "e.g. [0.5,0.75,1.0,1.25,1.5,1.75]",
        )
        parser.add_argument("--flip", type=bool, default=False, help="add horizontal flips")
        parser.add_argument("--crop_size", type=Optional[tuple[int, int]], default=None, help="slide crop (H, W)")
        parser.add_argument("--stride", type=Optional[tuple[int, int]], default=None, help="slide stride (H, W)")
        parser.add_argument(
            "--optimize",
            type=bool,
            default=True,
            help="on CPU: BatchNorm folded into the convs, channels_last, F.interpolate logit resize, "
            "dilated depthwise convs padded explicitly (seg.models.optimize_for_inference; "
            "same predictions to fp32 rounding)",
        )
        parser.add_argument(
            "--bf16",
            type=bool,
            default=False,
            help="on CPU: bf16 weights and autocast, about 2x faster on CPUs with AVX512-BF16 or AMX; "
            "logits change by bf16 rounding (on GPU use --trainer.precision=bf16-mixed)",
        )
        self.add_tool_arguments(parser)
        return parser

    def optimize_for(self, module: SegmentationModule, device: Any) -> None:
        """Applies ``--optimize`` / ``--bf16`` to ``module.model`` for inference on ``device`` (CPU only: on GPU the
        trainer's precision and cuDNN decide)."""
        import torch

        from seg.models.optimize import optimize_for_inference

        device = torch.device(device)
        cfg = self.config
        if device.type != "cpu" or not (cfg.optimize or cfg.bf16):
            return
        module.model = optimize_for_inference(
            module.model, device, fuse_bn=cfg.optimize, channels_last=cfg.optimize, bf16=cfg.bf16, inplace=True
        )

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        cfg = self.config
        model = cfg.model
        model.init_from = None  # the checkpoint provides every weight
        model.weights = None
        if cfg.mode is not None:
            model.eval_mode = cfg.mode
        if cfg.scales is not None:
            model.eval_scales = tuple(cfg.scales)
        if cfg.flip:
            model.eval_flip = True
        if cfg.crop_size is not None:
            model.eval_crop_size = tuple(cfg.crop_size)
        if cfg.stride is not None:
            model.eval_stride = tuple(cfg.stride)
        tta_reads_original_images(cfg)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        tcfg = self.config_init.trainer
        callbacks = console_callbacks(tcfg, [])
        kwargs.update(callbacks=callbacks, logger=False, enable_checkpointing=False)
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, [])  # no checkpoint section callback

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        try:
            load_seg_weights(self.model, self.config.ckpt)
        except (CheckpointError, FileNotFoundError) as err:
            if not self._command_line:
                raise
            sys.exit(f"error: {err}")
