"""``python train.py --config configs/X.yaml [--section.key=value ...] [--ckpt_path last|PATH]``.

LightningCLI with ``run=False`` then ``trainer.fit``. What the CLI adds to a plain LightningCLI:

* ``data.num_classes`` is linked to ``model.num_classes`` (the model is built for the data's classes).
* The run directory is ``trainer.default_root_dir`` (``runs/<recipe>`` in the configs)::

      <run_dir>/config.yaml                 merged config of the latest launch
      <run_dir>/checkpoints/best.ckpt       highest val/mIoU     (atomic writes)
      <run_dir>/checkpoints/last.ckpt       latest validation    (--ckpt_path last resumes from it)
      <run_dir>/summary.json                last/best val metrics, params, throughput (seg.compare reads it)
      <run_dir>/csv/version_N/metrics.csv   one version per launch
      <run_dir>/wandb/                      W&B files (online or offline), <run_dir>/wandb_id

* ``--wandb auto|online|offline|off`` and ``--wandb_project`` (see :mod:`seg.training.loggers`).
* Defaults for speed: bf16-mixed precision when CUDA (with bf16) is present, ``benchmark=True``
  (cudnn autotuning), SyncBatchNorm under multi-GPU DDP; on CPU sync_batchnorm is switched off (it crashes).
* Always-on callbacks: :class:`~seg.training.callbacks.SegCheckpoint` (section ``checkpoint``),
  :class:`~seg.training.resume.ExactResume` (RNG states and data position), ``RunSummary``,
  ``ValImageLogger`` (W&B only) and a Rich progress bar.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from seg.data import SegDataModule
from seg.data.base import DataError
from seg.models import checkpoint
from seg.models.checkpoint import CheckpointError

from .callbacks import RunSummary, SegCheckpoint, SegProgressBar, ValImageLogger
from .inference import is_tta
from .loggers import build_loggers
from .module import DivergenceError, SegmentationModule
from .resume import ExactResume


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


class SegSaveConfig(SaveConfigCallback):
    """Writes the merged config to ``<run_dir>/config.yaml`` and logs it to W&B (rank 0)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(run_dir / "config.yaml"), overwrite=True, multifile=False)
        config = self.parser.dump(self.config, format="json")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import json

                logger.experiment.config.update({"cli": json.loads(config)}, allow_val_change=True)


class SegCLI(LightningCLI):
    """LightningCLI for :class:`SegmentationModule` + :class:`SegDataModule` (see the module docstring)."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SegSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True, "save_to_log_dir": False})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"description": "Train a segmentation model (seg)."})
        super().__init__(SegmentationModule, SegDataModule, run=False, args=args, auto_configure_optimizers=False,
                         **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(SegCheckpoint, "checkpoint")
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="resume: 'last' (the run's last.ckpt) or a checkpoint path")
        parser.add_argument("--wandb", type=Literal["auto", "online", "offline", "off"], default="auto",
                            help="W&B logging: auto = online if logged in, else offline; off = CSV only")
        parser.add_argument("--wandb_project", type=str, default="seg", help="W&B project name")
        parser.set_defaults({
            "trainer.default_root_dir": "runs/seg",
            "trainer.precision": "bf16-mixed" if _cuda_bf16() else "32-true",
            "trainer.benchmark": True,
            "trainer.sync_batchnorm": True,  # only takes effect under multi-process strategies; off on CPU
        })

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        trainer = cfg.trainer
        run_dir = trainer.default_root_dir
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(run_dir, "checkpoints")
        vci = trainer.val_check_interval
        if vci is not None and not vci > 0:  # Lightning would divide by it (ZeroDivisionError) mid-training
            self.parser.error(f"trainer.val_check_interval={vci!r}: must be > 0: an int validates every N training "
                              "steps, a float in (0, 1] after that fraction of an epoch")
        if trainer.sync_batchnorm and (str(trainer.accelerator) == "cpu" or not torch.cuda.is_available()):
            trainer.sync_batchnorm = False  # torch SyncBatchNorm has no CPU implementation
        if str(trainer.precision).startswith("bf16") and (str(trainer.accelerator) == "cpu"
                                                          or not torch.cuda.is_available()):
            rank_zero_warn("bf16 precision on CPU is slow; the default without CUDA is 32-true")
        tta_reads_original_images(cfg)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self.config
        tcfg = self.config_init.trainer
        callbacks = list(tcfg.callbacks or [])
        callbacks += [ExactResume(), RunSummary(tcfg.default_root_dir),
                      ValImageLogger()]
        if tcfg.enable_progress_bar is not False and not any(isinstance(c, RichProgressBar) for c in callbacks):
            callbacks.append(SegProgressBar(leave=True))
        kwargs["callbacks"] = callbacks
        if tcfg.logger is None or tcfg.logger is True:
            kwargs["logger"] = build_loggers(tcfg.default_root_dir, cfg.wandb, cfg.wandb_project,
                                             resume=cfg.ckpt_path is not None)
        return super().instantiate_trainer(**kwargs)


# Errors whose message says all (the file, the value, what to do): the command line prints them without a traceback.
USER_ERRORS = (CheckpointError, DataError, DivergenceError, FileNotFoundError, PermissionError)


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or isinstance(err, OSError) and err.errno == errno.ENOSPC


def main(args: Any = None) -> SegCLI:
    """Entry point of ``train.py``: parse, build, fit (resuming from ``--ckpt_path`` if given).

    From the command line (``args=None``) the errors of ``USER_ERRORS`` end the process with ``error: ...`` and
    exit code 1; called with ``args`` they are raised.
    """
    try:
        cli = SegCLI(args=args)
        # weights_only: a resume never runs code from the checkpoint (AtomicCheckpointIO reads it safely too)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    except Exception as err:
        if args is not None or not _is_user_error(err):
            raise
        sys.exit(f"error: {_one_line(err)}")
    return cli


def _one_line(err: BaseException) -> str:
    """The message itself, also for errors re-raised from a DataLoader worker (which embed the worker's traceback)."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]  # "seg.data.base.DataError: <message>"
    return text


if __name__ == "__main__":
    main(sys.argv[1:])


def tta_reads_original_images(cfg: Any) -> None:
    """mmseg 1.x ``TestTimeAug`` scales the *original* image, not the test-scale one: with several scales or
    flip, the eval data pipeline hands over the original image (``data.val_mode='full'``) and the model resizes
    it to each scale's size (:func:`seg.training.inference.tta_size`)."""
    model, data = cfg.model, cfg.data
    if is_tta(model.eval_scales, model.eval_flip) and data.val_mode != "full":
        rank_zero_info(f"test-time augmentation (scales {list(model.eval_scales)}, flip {model.eval_flip}) scales the "
                       f"original images (mmseg TestTimeAug): data.val_mode {data.val_mode!r} -> 'full'")
        data.val_mode = "full"


def find_run_config(ckpt: str | os.PathLike) -> Optional[Path]:
    """``<run_dir>/config.yaml`` for a checkpoint at ``<run_dir>/checkpoints/*.ckpt``, if it exists."""
    p = Path(ckpt).resolve()
    for cand in (p.parent / "config.yaml", p.parent.parent / "config.yaml"):
        if cand.is_file():
            return cand
    return None


def load_seg_weights(module: SegmentationModule, ckpt: str | os.PathLike) -> None:
    """Strictly loads a seg checkpoint (or ``seg.convert`` output) into ``module.model``, read safely."""
    checkpoint.load_seg_weights(module.model, ckpt, what="--ckpt", hint=(
        "Check --config / --model.* against the checkpoint's run config (<run_dir>/config.yaml)."))


class SegToolCLI(SegCLI):
    """The train.py parser (same config files and dotted overrides) for ``seg.evaluate`` / ``seg.predict``:
    adds ``--ckpt``, the inference options and the tool's own arguments; builds a Trainer without loggers or
    training callbacks. Without ``--config``, the ``config.yaml`` of the checkpoint's run dir is used."""

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
        super().__init__(args=args, **kwargs)

    def add_tool_arguments(self, parser: LightningArgumentParser) -> None:
        """Hook for the tool's own arguments."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt", type=str, required=True, help="seg checkpoint (or seg.convert output)")
        parser.add_argument("--mode", type=Optional[Literal["whole", "slide"]], default=None,
                            help="inference mode (default: model.eval_mode)")
        parser.add_argument("--scales", type=Optional[list[float]], default=None,
                            help="test-time scale factors of the original image size (mmseg TestTimeAug), "
                                 "e.g. [0.5,0.75,1.0,1.25,1.5,1.75]")
        parser.add_argument("--flip", type=bool, default=False, help="add horizontal flips")
        parser.add_argument("--crop_size", type=Optional[tuple[int, int]], default=None, help="slide crop (H, W)")
        parser.add_argument("--stride", type=Optional[tuple[int, int]], default=None, help="slide stride (H, W)")
        self.add_tool_arguments(parser)

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
        callbacks = []
        if tcfg.enable_progress_bar is not False:
            callbacks.append(SegProgressBar(leave=True))
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
