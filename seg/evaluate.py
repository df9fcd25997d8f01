"""Evaluate a checkpoint: ``python -m seg.evaluate --ckpt K [--mode whole|slide] [--scales ...] [--flip true]
[--output metrics.json] [--report DIR [--report_worst K]] [--config C] [--data.KEY=V ...]
[--trainer.devices=2 --trainer.strategy=ddp]``.

Writes ``metrics.json`` (mIoU, aAcc, mAcc, per-class IoU/Acc, images, images/s, inference settings); by default
next to the run (``<run_dir>/metrics.json`` for ``<run_dir>/checkpoints/X.ckpt``, else beside the file). The model
and its settings come from the checkpoint alone; the data settings default to those it was trained with. The
confusion matrix is summed over ranks and the test sampler never pads, so the numbers are the same with any number
of processes. ``--report DIR`` also writes, from the same pass, :mod:`seg.report`'s folder: ``report.html``
(confusions, per-class IoU with bootstrap intervals, per-image mIoU, the K worst images, calibration/ECE),
``report.json`` and ``confusion.csv``.

Protocol (mmseg 1.x): the image is resized to the data's test scale (``data.val_mode: resize``), the ground truth
keeps its original size, and the logits are resized bilinearly to it before scoring (per image, on every rank).
``--scales``/``--flip`` follow mmseg's ``TestTimeAug``: each factor scales the original image size. Validation
during training, this command and ``seg.compare`` score through the same step (:mod:`seg.evaluation`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

from seg.command_line import REMOTE_CHECKPOINTS
from seg.data import SegDataModule
from seg.evaluation import Scores
from seg.io import write_json
from seg.training.console import progress_bar, quiet_lightning
from seg.training.summary import class_rows, count_parameters, percent
from seg.training.tool_cli import (
    INFERENCE_HELP,
    ToolError,
    build_module,
    module_hparams,
    optimize_for,
    parse_tool_args,
    tool_parser,
    tta_val_mode,
)

__all__ = ["default_output", "evaluate_checkpoint", "main"]

DESCRIPTION = (
    "Evaluate a checkpoint: mIoU, aAcc, mAcc and per-class IoU/Acc on the val (or --split) set, written to "
    "metrics.json. The model and its settings come from the checkpoint; --data.* change the data settings."
)
USAGE = "python -m seg.evaluate --ckpt CKPT [--output FILE] [--mode slide] [--data.KEY=V ...] [--trainer.KEY=V ...]"


def _own_arguments(parser) -> None:
    parser.add_argument(
        "--output", type=Optional[str], default=None, help="metrics.json path (default: <run_dir>/metrics.json)"
    )
    parser.add_argument("--split", type=Optional[str], default=None, help="split to evaluate (default: val)")
    parser.add_argument(
        "--report",
        type=Optional[str],
        default=None,
        help="also write a report folder: report.html, charts, confusion.csv, report.json (seg.report)",
    )
    parser.add_argument("--report_worst", type=int, default=8, help="worst images shown in the report (default 8)")


def default_output(ckpt: str | Path) -> Path:
    """``<run_dir>/metrics.json`` for ``<run_dir>/checkpoints/X.ckpt``, else ``metrics.json`` beside the file
    (in the current folder for ``mmseg:<name>`` and URLs)."""
    if str(ckpt).startswith(REMOTE_CHECKPOINTS):
        return Path("metrics.json")
    p = Path(ckpt).resolve()
    return (p.parent.parent if p.parent.name == "checkpoints" else p.parent) / "metrics.json"


def evaluate_checkpoint(
    ckpt: str | Path,
    data: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    optimize: bool = True,
    bf16: bool = False,
    report: str | Path | None = None,
    report_worst: int = 8,
) -> tuple[dict[str, Any], Scores]:
    """Evaluate checkpoint ``ckpt`` on its test split: ``(result, scores)``.

    Args:
        ckpt: a seg checkpoint.
        data: the SegDataModule arguments (default: those the checkpoint was trained with).
        hparams: evaluation settings that replace the checkpoint's (``eval_mode``, ``eval_scales`` ...).
        trainer: Trainer arguments (devices, strategy, accelerator, precision, enable_progress_bar).
        optimize, bf16: the CPU inference levers (:func:`seg.training.tool_cli.optimize_for`).
        report: a folder for the report of this same pass (:mod:`seg.report`; written by rank 0), or None.
        report_worst: images in the report's worst-image list.

    Returns:
        ``result``: what ``metrics.json`` holds; ``scores``: the synced :class:`seg.evaluation.Scores` (confusion
        matrix, per-image counts and paths), identical on every rank.
    """
    quiet_lightning()
    if report is not None and Path(report).exists() and not Path(report).is_dir():
        raise ToolError(f"--report {report} is a file: give a folder for the report (created if missing)")
    if report_worst < 0:
        raise ToolError(f"--report_worst {report_worst}: give a number of images >= 0")
    module, info = build_module(ckpt, hparams)
    hp = module.hparams
    data = tta_val_mode(dict(hp), dict(info.data if data is None else data))
    if not data:
        raise ToolError(
            f"{ckpt} records no data settings (a seg.convert output): pass --config <train.py YAML> or "
            "--data.dataset / --data.root"
        )
    dm = SegDataModule(**data)
    if dm.num_classes != info.num_classes:
        raise ToolError(
            f"the data ({dm.dataset_name} at {dm.root}) has {dm.num_classes} classes, the model {info.num_classes} "
            f"({info.path}): evaluate on the data it was trained for (--config / --data.*)"
        )
    module.class_names = list(dm.classes)
    if report is not None:
        from seg.report.collect import ReportCollector

        module.report_collector = ReportCollector(report_worst, ignore_index=hp.ignore_index)
    tcfg = {"accelerator": "auto", "devices": 1, "precision": "32-true", "enable_progress_bar": True, **(trainer or {})}
    show_bar = tcfg.pop("enable_progress_bar")
    pl_trainer = Trainer(
        **tcfg,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=show_bar,
        callbacks=[progress_bar()] if show_bar else [],
        benchmark=True,
    )
    params = count_parameters(module.model)  # before BatchNorm folding (--optimize) removes the BN parameters
    bf16 = optimize_for(module, pl_trainer.strategy.root_device, optimize, bf16)  # fp32 where bf16 is emulated
    t0 = time.perf_counter()
    pl_trainer.test(module, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - t0
    metrics = dict(module.last_metrics["test"])
    n = metrics.pop("num_images", None)
    metrics.pop("step", None)
    slide = hp.eval_mode == "slide"
    result = {
        **metrics,
        "num_images": n,
        "images_per_s": (n / seconds) if n else None,
        "seconds": seconds,
        "mode": hp.eval_mode,
        "scales": list(hp.eval_scales),
        "flip": hp.eval_flip,
        "val_mode": dm.hparams.val_mode,
        "test_scale": _test_scale(dm),
        "crop_size": list(hp.eval_crop_size) if slide else None,
        "stride": list(hp.eval_stride) if slide else None,
        "ckpt": str(ckpt),
        "split": dm.test_split,
        "data_root": str(dm.root),
        "world_size": pl_trainer.world_size,
        "backbone": info.backbone,
        "head": info.head,
        "params": params,
        "optimize": bool(optimize),
        "bf16": bool(bf16),
    }
    if report is not None:
        result["ECE"] = module.report_collector.calibration.ece
        result["report"] = str(Path(report) / "report.html")
        if rank_zero_only.rank == 0:
            from seg.report.page import write_report

            write_report(
                report,
                result,
                module.scores["test"],
                module.report_collector,
                dm.classes,
                info.palette,
                hp.ignore_index,
            )
    return result, module.scores["test"]


def _test_scale(dm) -> list[int] | None:
    from seg.data.datamodule import test_scale_of

    scale = test_scale_of(dict(dm.hparams))
    return list(scale) if scale is not None else None


HELP = [
    "--ckpt CKPT",
    "--config FILE",
    "--output FILE",
    "--split NAME",
    "--report DIR",
    "--report_worst K",
    *INFERENCE_HELP,
    "# data (default: the data the checkpoint was trained on)",
    "--data.root DIR",
    "--data.dataset folder|cityscapes|ade20k",
    "--data.num_workers N",
    "--data.val_batch_size N",
    "# processes",
    "--trainer.devices N",
    "--trainer.accelerator cpu|gpu|auto",
    "--trainer.strategy auto|ddp",
    "--trainer.precision 32-true|bf16-mixed",
]


def main(args: Optional[list[str]] = None) -> dict[str, Any]:
    parser = tool_parser("python -m seg.evaluate", DESCRIPTION, USAGE, _own_arguments)
    ns, info = parse_tool_args(parser, args, HELP)
    data = ns.data.as_dict()
    if ns.split is not None:
        data["test_split"] = ns.split
    try:
        result, _ = evaluate_checkpoint(
            ns.ckpt,
            data=data,
            hparams=module_hparams(ns, info),
            trainer=ns.trainer.as_dict(),
            optimize=ns.optimize,
            bf16=ns.bf16,
            report=ns.report,
            report_worst=ns.report_worst,
        )
    except ToolError as err:
        if args is not None:
            raise
        parser.error(str(err))
    if rank_zero_only.rank == 0:  # under DDP every process evaluated its share; one writes
        out = Path(ns.output) if ns.output else default_output(ns.ckpt)
        write_json(result, out)
        print(
            f"mIoU {percent(result['mIoU'])}%  aAcc {percent(result['aAcc'])}%  mAcc {percent(result['mAcc'])}%  "
            f"({result['num_images']} images, {result['world_size']} process(es)) -> {out}"
        )
        title, rows = class_rows(result)  # the table train.py's closing block shows
        print(f"{title}:\n" + "\n".join(f"  {row}" for row in rows))
        if ns.report is not None:
            print(f"report (ECE {percent(result['ECE'])}%): {result['report']}")
    return result


if __name__ == "__main__":
    main()
