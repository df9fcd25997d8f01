"""Evaluate a checkpoint: ``python -m seg.evaluate --config C --ckpt K [--mode whole|slide] [--scales ...]
[--flip] [--output metrics.json]`` plus any train.py override (``--trainer.devices=2 --trainer.strategy=ddp``).

Writes ``metrics.json`` (mIoU, aAcc, mAcc, per-class IoU/Acc, images, images/s, inference settings); by default
next to the run (``<run_dir>/metrics.json`` for ``<run_dir>/checkpoints/X.ckpt``). The confusion matrix is
summed over ranks and the test sampler never pads, so the numbers are the same with any number of processes.

Protocol (mmseg 1.x): the image is resized to the data's test scale (``data.val_mode: resize``), the ground truth
keeps its original size, and the logits are resized bilinearly to it before scoring (per image, on every rank).
``--scales``/``--flip`` follow mmseg's ``TestTimeAug``: each factor scales the original image size.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser

from seg.models.checkpoint import atomic_write_text
from seg.training.summary import count_parameters
from seg.training.tool_cli import SegToolCLI


class EvaluateCLI(SegToolCLI):
    description = (
        "Evaluate a checkpoint: mIoU, aAcc, mAcc and per-class IoU/Acc on the val (or --split) set, "
        "written to metrics.json. Model/data/trainer options as in train.py."
    )
    usage = (
        "python -m seg.evaluate --ckpt CKPT [-c CONFIG] [--mode whole|slide] [--scales ...] [--flip true] "
        "[--output FILE] ..."
    )

    def add_tool_arguments(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--output", type=Optional[str], default=None, help="metrics.json path (default: <run_dir>/metrics.json)"
        )
        parser.add_argument("--split", type=Optional[str], default=None, help="split to evaluate (default: val)")

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if self.config.split is not None:
            self.config.data.test_split = self.config.split


def default_output(ckpt: str) -> Path:
    p = Path(ckpt).resolve()
    return (p.parent.parent if p.parent.name == "checkpoints" else p.parent) / "metrics.json"


def main(args: Optional[list[str]] = None) -> dict[str, Any]:
    cli = EvaluateCLI(args=args)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    params = count_parameters(module.model)  # before BatchNorm folding (--optimize) removes the BN parameters
    cli.optimize_for(module, trainer.strategy.root_device)
    t0 = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - t0
    res = dict(module.last_metrics["test"])
    hp = module.hparams
    n = res.pop("num_images", None)
    result = {
        "mIoU": res["mIoU"],
        "aAcc": res["aAcc"],
        "mAcc": res["mAcc"],
        "per_class_IoU": res["per_class_IoU"],
        "per_class_Acc": res["per_class_Acc"],
        "num_images": n,
        "images_per_s": (n / seconds) if n else None,
        "seconds": seconds,
        "mode": hp.eval_mode,
        "scales": list(hp.eval_scales),
        "flip": hp.eval_flip,
        "val_mode": dm.hparams.val_mode,
        "test_scale": list(dm.scale) if dm.scale and dm.hparams.val_mode == "resize" else None,
        "crop_size": list(hp.eval_crop_size) if hp.eval_mode == "slide" else None,
        "stride": list(hp.eval_stride) if hp.eval_mode == "slide" else None,
        "ckpt": str(cli.config.ckpt),
        "split": dm.test_split,
        "world_size": trainer.world_size,
        "backbone": hp.backbone,
        "head": hp.head,
        "params": params,
        "optimize": bool(cli.config.optimize),
        "bf16": bool(cli.config.bf16),
    }
    if trainer.is_global_zero:
        out = Path(cli.config.output) if cli.config.output else default_output(cli.config.ckpt)
        atomic_write_text(json.dumps(result, indent=2), out)
        print(
            f"mIoU {result['mIoU']:.4f}  aAcc {result['aAcc']:.4f}  mAcc {result['mAcc']:.4f}  "
            f"({n} images, {trainer.world_size} process(es)) -> {out}"
        )
    return result


if __name__ == "__main__":
    main()
