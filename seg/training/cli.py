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

* ``--wandb auto|online|offline|off`` (YAML's ``off`` too) and ``--wandb_project`` (:mod:`seg.training.loggers`).
* What the run refuses before it writes anything: a config that names code outside seg, torch and Lightning
  (:mod:`seg.training.config_scan`, exit 2), a run folder another run holds (:mod:`seg.training.run_lock`), a
  resume whose config changes the network (:mod:`seg.training.resume_config`; changed optimisation settings are
  applied and listed).
* SIGTERM / Ctrl-C: ``last.ckpt`` at the current step, exit 143 / 130 and the command that continues the run
  (:mod:`seg.training.interrupt`).
* Defaults for speed: bf16-mixed precision when CUDA (with bf16) is present, ``benchmark=True``
  (cudnn autotuning), SyncBatchNorm under multi-GPU DDP; on CPU sync_batchnorm is switched off (it crashes).
* ``model.head_kwargs`` is typed by the chosen head's signature (:mod:`seg.training.head_args`): checked at parse
  time, completed with the head's defaults, shown by ``--print_config``.
* Always-on callbacks: :class:`~seg.training.checkpointing.SegCheckpoint` (section ``checkpoint``),
  :class:`~seg.training.resume.ExactResume` (RNG states and data position), ``RunSummary``,
  ``ValImageLogger`` (W&B only), a one-line model summary and one progress bar for the run (live on a terminal,
  plain lines in a log file; :mod:`seg.training.progress`). A finished run ends with a closing block: the result,
  the files and the next commands (:func:`seg.training.summary.closing_block`).

The evaluation/prediction commands' parser is :class:`seg.training.tool_cli.SegToolCLI`.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seg.command_line import UsageError, usage_exit
from seg.data import SegDataModule
from seg.data.base import DataError
from seg.models.inference import is_tta
from seg.models.safe_load import CheckpointError, read_checkpoint

from .checkpointing import SegCheckpoint, remove_partial_checkpoints
from .config_scan import ConfigCodeError, check_arguments, check_object
from .console import SegModelSummary, progress_bar, quiet_lightning
from .head_args import HeadArgumentError, typed_head_kwargs
from .interrupt import RunStopped, StopOnSignal, resume_command
from .loggers import ValImageLogger, build_loggers, finish_wandb, run_identity, wandb_mode
from .module import DivergenceError, SegmentationModule
from .resume import ExactResume
from .resume_config import ApplyNewSettings, ResumeConfigError, check_resume, resume_path
from .run_lock import RunDirBusy, RunLock, release_all
from .summary import RunSummary, ValidateAtEnd, run_closing_block
from .train_args import head_switch_hint, prepare_argv


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
        quiet_lightning()
        kwargs.setdefault("save_config_callback", SegSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True, "save_to_log_dir": False})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault(
            "parser_kwargs",
            {
                "description": "Train a segmentation model (seg). Every option can be set in the --config YAML or as "
                "--section.key=value; --print_config shows the merged config, head arguments included.",
                "usage": "python train.py --config CONFIG [--section.key=value ...] [--ckpt_path last|PATH] "
                "[--print_config]",
            },
        )
        super().__init__(
            SegmentationModule, SegDataModule, run=False, args=args, auto_configure_optimizers=False, **kwargs
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses ``args`` (a list of command-line strings, ``None`` = ``sys.argv[1:]``, or a dict/Namespace), types
        ``model.head_kwargs`` by the chosen head (a bad one is a parse error) and then answers ``--print_config``,
        so the printed config shows the head's arguments with their defaults."""
        try:  # before jsonargparse reads a config: it imports the classes a config names
            if isinstance(args, (dict, Namespace)):
                check_object(args.as_dict() if isinstance(args, Namespace) else args)
            else:
                argv = prepare_argv(parser, list(sys.argv[1:] if args is None else args))  # help, fit, typos
                argv, print_flags = take_print_config(argv)
                check_arguments(argv)
        except ConfigCodeError as err:
            parser.error(str(err))
        if isinstance(args, (dict, Namespace)):
            cfg, print_flags = parser.parse_object(args), None
        else:
            cfg = parser.parse_args(argv)
        cfg.wandb = wandb_mode(cfg.wandb)
        try:
            cfg.model.head_kwargs = typed_head_kwargs(cfg.model.head, cfg.model.head_kwargs)
            check_model(cfg.model.head, cfg.model.backbone, cfg.model.output_stride)
        except (HeadArgumentError, ValueError) as err:
            hint = None if isinstance(args, (dict, Namespace)) else head_switch_hint(argv, cfg.model)
            if hint is not None:
                usage_exit(UsageError(str(err), hint))
            parser.error(str(err))
        self.config = cfg
        if print_flags is not None:
            sys.stdout.write(parser.dump(cfg, skip_validation=True, **print_flags))
            sys.exit(0)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(SegCheckpoint, "checkpoint")
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help="resume: 'last' (the run's last.ckpt) or a checkpoint path",
        )
        parser.add_argument(
            "--wandb",
            type=Union[Literal["auto", "online", "offline", "off"], bool],  # YAML reads `wandb: off` as False
            default="auto",
            help="W&B logging: auto = online if logged in, else offline; off = CSV only",
        )
        parser.add_argument("--wandb_project", type=str, default="seg", help="W&B project name")
        parser.set_defaults(
            {
                "trainer.default_root_dir": "runs/seg",
                "trainer.precision": "bf16-mixed" if _cuda_bf16() else "32-true",
                "trainer.benchmark": True,
                "trainer.sync_batchnorm": True,  # only takes effect under multi-process strategies; off on CPU
            }
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        trainer = cfg.trainer
        run_dir = trainer.default_root_dir
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(run_dir, "checkpoints")
        vci = trainer.val_check_interval
        if vci is not None and not vci > 0:  # Lightning would divide by it (ZeroDivisionError) mid-training
            self.parser.error(
                f"trainer.val_check_interval={vci!r}: must be > 0: an int validates every N training "
                "steps, a float in (0, 1] after that fraction of an epoch"
            )
        if trainer.sync_batchnorm and (str(trainer.accelerator) == "cpu" or not torch.cuda.is_available()):
            trainer.sync_batchnorm = False  # torch SyncBatchNorm has no CPU implementation
        if str(trainer.precision).startswith("bf16") and (
            str(trainer.accelerator) == "cpu" or not torch.cuda.is_available()
        ):
            rank_zero_warn("bf16 precision on CPU is slow; the default without CUDA is 32-true")
        tta_reads_original_images(cfg)
        if rank_zero_only.rank == 0 and "://" not in str(run_dir):  # DDP ranks share the folder: rank 0 holds it
            RunLock(run_dir).acquire()  # released by main(), else at exit

    def check_resume(self) -> None:
        """Refuse a ``--ckpt_path`` resume whose config changes the network (before the loggers start and before
        ``config.yaml`` is saved); list the optimisation settings it changes, which are applied
        (:mod:`seg.training.resume_config`)."""
        cfg = self.config
        path = resume_path(cfg.ckpt_path, cfg.checkpoint.dirpath)
        if path is None:
            return
        remove_partial_checkpoints(path.parent)
        ckpt = read_checkpoint(path, what="--ckpt_path")
        max_steps = self.config_init.trainer.max_steps
        iters = self.model.hparams.max_iters or (max_steps if max_steps and max_steps > 0 else None)
        changes = check_resume(path, ckpt, self.model, self.datamodule, iters)
        if changes:
            step = ckpt.get("global_step")
            rank_zero_info(
                f"resuming {path} (step {step}) with changed settings, applied from there: {', '.join(changes)}"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self.config
        tcfg = self.config_init.trainer
        self.check_resume()
        callbacks = list(tcfg.callbacks or [])
        callbacks += [ExactResume(), ApplyNewSettings(), RunSummary(tcfg.default_root_dir), ValidateAtEnd()]
        callbacks += [ValImageLogger(), StopOnSignal()]
        callbacks += console_callbacks(tcfg, callbacks)
        kwargs["callbacks"] = callbacks
        if tcfg.logger is None or tcfg.logger is True:
            kwargs["logger"] = build_loggers(
                tcfg.default_root_dir,
                cfg.wandb,
                cfg.wandb_project,
                resume=cfg.ckpt_path is not None,
                identity=run_identity(cfg.model.head, cfg.model.backbone, cfg.data.dataset, cfg.data.root),
            )
        return super().instantiate_trainer(**kwargs)


def check_model(head: str, backbone: str, output_stride: int) -> None:
    """What can be known about the model before building it (:meth:`seg.models.registry.HeadSpec.check`: an
    unknown head, an output stride or backbone the head cannot run with). Raises ``ValueError`` naming the value
    and what to set instead."""
    from seg.models import get_head

    get_head(head).check(backbone, output_stride)


def console_callbacks(tcfg: Any, callbacks: list[Any]) -> list[Any]:
    """The progress bar and model summary the trainer config asks for, unless ``callbacks`` has its own."""
    extra: list[Any] = []
    if tcfg.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        extra.append(progress_bar())
    if tcfg.enable_model_summary is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
        extra.append(SegModelSummary())
    return extra


def take_print_config(argv: list[str]) -> tuple[list[str], Optional[dict[str, bool]]]:
    """Removes ``--print_config[=flags]`` from ``argv``; returns the rest and the ``dump`` options it asked for
    (None if absent). Flags as jsonargparse's own ``--print_config``: ``skip_default``, ``skip_unset``
    (``skip_null`` = ``skip_unset``)."""
    rest: list[str] = []
    flags: Optional[dict[str, bool]] = None
    for arg in argv:
        if arg == "--print_config" or arg.startswith("--print_config="):
            flags = {}
            for flag in filter(None, arg.partition("=")[2].split(",")):
                if flag not in ("skip_default", "skip_unset", "skip_null"):
                    sys.exit(f"error: --print_config={flag}: valid flags are skip_default, skip_unset")
                flags["skip_default" if flag == "skip_default" else "skip_unset"] = True
            continue
        rest.append(arg)
    if flags is not None:
        flags.setdefault("skip_unset", False)
    return rest, flags


class TrainingBatchError(ValueError):
    """A training batch of one image reached BatchNorm after pooling (one value per channel)."""


# Errors whose message says all (the file, the value, what to do): the command line prints them without a traceback.
USER_ERRORS = (
    CheckpointError,
    DataError,
    DivergenceError,
    FileNotFoundError,
    PermissionError,
    ResumeConfigError,
    RunDirBusy,
    TrainingBatchError,
)


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or isinstance(err, OSError) and err.errno == errno.ENOSPC


def main(args: Any = None) -> SegCLI:
    """Entry point of ``train.py``: parse, build, fit (resuming from ``--ckpt_path`` if given).

    From the command line (``args=None``) the errors of ``USER_ERRORS`` end the process with ``error: ...`` and
    exit code 1; called with ``args`` they are raised. A stop on SIGTERM / Ctrl-C prints what was saved and the
    command that continues the run, and exits 143 / 130 (:class:`~seg.training.interrupt.RunStopped`, a
    ``SystemExit``, raised in both cases).
    """
    cli: Optional[SegCLI] = None
    try:
        cli = SegCLI(args=args)
        for callback in cli.trainer.callbacks:
            if isinstance(callback, SegCheckpoint):
                callback.resuming = cli.config.ckpt_path is not None
        # weights_only: a resume never runs code from the checkpoint (AtomicCheckpointIO reads it safely too)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    except BaseException as err:
        stop = _stopped(cli, err)
        if stop is not None:
            _finish_wandb(cli, stop.code)
            if rank_zero_only.rank == 0:
                print(f"{stop.message}; continue with: {resume_command(args)}", file=sys.stderr, flush=True)
            raise stop from None
        _finish_wandb(cli, 1)
        if not isinstance(err, Exception):
            raise
        err = _small_batch_error(cli, err) or err
        if args is not None or not _is_user_error(err):
            raise err
        sys.exit(f"error: {_one_line(err)}")
    finally:
        release_all()
        for callback in cli.trainer.callbacks if cli is not None else []:
            if isinstance(callback, StopOnSignal):
                callback.restore()
    wandb_runs = _finish_wandb(cli, 0)  # W&B's closing lines first: the result is the last thing on screen
    if rank_zero_only.rank == 0:
        print(run_closing_block(cli.trainer, cli.datamodule, wandb_runs), flush=True)
    return cli


def _stopped(cli: Optional[SegCLI], err: BaseException) -> Optional[RunStopped]:
    """``err`` as a stop on a signal (see :meth:`StopOnSignal.stopped`), or None."""
    stop = next((cb for cb in cli.trainer.callbacks if isinstance(cb, StopOnSignal)), None) if cli else None
    found = stop.stopped(err) if stop is not None else (err if isinstance(err, RunStopped) else None)
    if found is None and isinstance(err, SIGTERMException):  # Lightning's: a SIGTERM before training started
        found = RunStopped(signal.SIGTERM, "stopped by SIGTERM before training started: nothing saved by this launch")
    return found


def _finish_wandb(cli: Optional[SegCLI], exit_code: int) -> list[str]:
    trainer = getattr(cli, "trainer", None)
    return finish_wandb(trainer.loggers, exit_code) if trainer is not None else []


def _small_batch_error(cli: Optional[SegCLI], err: Exception) -> Optional[TrainingBatchError]:
    """BatchNorm's "Expected more than 1 value per channel when training" as what it means for the run: a training
    batch of one image reached BatchNorm after pooling (PSP, ASPP image pooling ...)."""
    if cli is None or not isinstance(err, ValueError) or "Expected more than 1 value per channel" not in str(err):
        return None
    dm, world = cli.datamodule, max(1, cli.trainer.world_size)
    try:
        images = len(dm.dataset("train"))
    except Exception:  # noqa: BLE001  the count only completes the message
        images = "?"
    per_rank = f", {world} processes" if world > 1 else ""
    return TrainingBatchError(
        f"a training batch holds 1 image: the training split has {images} image(s) and data.batch_size="
        f"{dm.hparams.get('batch_size')}{per_rank}, and BatchNorm after pooling (model.head={cli.model.hparams.head}) "
        "needs at least 2 images per batch. Use a larger training split or data.batch_size, or a head without "
        "BatchNorm after pooling (e.g. --model.head=fcn)"
    )


def _one_line(err: BaseException) -> str:
    """The message itself, also for errors re-raised from a DataLoader worker (which embed the worker's traceback)."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]  # "seg.data.base.DataError: <message>"
    return text


def tta_reads_original_images(cfg: Any) -> None:
    """mmseg 1.x ``TestTimeAug`` scales the *original* image, not the test-scale one: with several scales or
    flip, the eval data pipeline hands over the original image (``data.val_mode='full'``) and the model resizes
    it to each scale's size (:func:`seg.models.inference.tta_size`)."""
    model, data = cfg.model, cfg.data
    if is_tta(model.eval_scales, model.eval_flip) and data.val_mode != "full":
        rank_zero_info(
            f"test-time augmentation (scales {list(model.eval_scales)}, flip {model.eval_flip}) scales the "
            f"original images (mmseg TestTimeAug): data.val_mode {data.val_mode!r} -> 'full'"
        )
        data.val_mode = "full"


if __name__ == "__main__":
    main()
