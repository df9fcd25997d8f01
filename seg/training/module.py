"""SegmentationModule: the Lightning glue around a ``seg.models`` network (held as ``self.model``).

One shared step computes the loss of every output (``out`` + ``aux`` 0.4 + DANet's ``pam``/``cam`` 1.0, see
:mod:`seg.training.losses`), SGD with per-iteration poly decay (mmseg recipe); validation and test score through
:mod:`seg.evaluation` (the one evaluation step ``seg.evaluate`` and ``seg.compare`` run too). Checkpoints store
the network under ``model.`` keys plus the ``seg`` entry that rebuilds and serves it (classes, palette, mean/std,
evaluation settings): the *seg checkpoint* of :mod:`seg.models.checkpoint`, readable by :func:`seg.load_model`
wherever the file is copied.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from seg.data.base import DataError
from seg.evaluation import Scores, predict_batch
from seg.models.checkpoint import META_KEY, checkpoint_meta, load_matching, non_finite_keys
from seg.models.inference import EvalSettings

from .losses import LossSpec, SegLoss
from .scheduler import PolyLR

try:  # --model.loss is checked at parse time (parse_loss's message) and written to configs as a plain string
    from jsonargparse.typing import register_type

    register_type(LossSpec, serializer=str, deserializer=LossSpec)
except (ImportError, ValueError):  # no jsonargparse (no CLI), or registered already
    pass

# val/test metrics are computed from the rank-summed confusion matrix, so they are already equal on every rank.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


class DivergenceError(FloatingPointError):
    """The training loss or the weights became NaN/Inf: training stops instead of saving garbage."""


def load_matching_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Loads every tensor of a seg checkpoint (train.py's, ``seg.convert``'s) whose name and shape match ``model``;
    the rest keep their initialisation. The file is read by :func:`seg.load_model`. Returns the report of
    :func:`seg.models.checkpoint.load_matching`."""
    from seg.loading import load_model

    source, _ = load_model(path)
    return load_matching(model, source.state_dict())


class SegmentationModule(L.LightningModule):
    """Semantic segmentation training/evaluation for any backbone + head of ``seg.models``.

    Args:
        backbone: timm backbone name (``resnet50c`` = mmseg ResNetV1c).
        head: a head of ``seg.models.all_head_names()``: a native one (fcn, ccnet, danet, nonlocal, axial, ...) or
            an smp architecture (smp:Unet, smp:DeepLabV3Plus, ...; no aux head, ``output_stride`` as it allows).
        num_classes: number of classes (the CLI links it from ``data.num_classes``).
        output_stride: backbone output stride (8 = the "-D8" recipes; 32 = undilated, UPerNet).
        aux: add the auxiliary FCN head on stage 3.
        aux_weight: loss weight of the auxiliary output (0.4); other outputs weigh 1.0.
        weights: backbone weights: None (random), 'open-mmlab' (mmseg's ImageNet ResNetV1c), 'imagenet' (timm's), or a
            local .pth/.safetensors path.
        head_kwargs: extra keyword arguments of the head (e.g. ``{attention: cbam}``, ``{channels: 512}``).
        backbone_kwargs: extra timm constructor arguments of the backbone (e.g. narrow widths in tests).
        loss: 'ce', 'ohem' (threshold ``ohem_thresh``, at least ``ohem_min_kept`` pixels per image), smp's 'dice',
            'focal', 'lovasz', or a weighted sum of them: 'ce+dice', 'ce+0.5*dice' (see seg.training.losses).
            Every term applies to every output (aux weighted by ``aux_weight``).
        ohem_thresh: OHEM probability threshold.
        ohem_min_kept: OHEM minimum kept pixels per image.
        avg_non_ignore: divide the summed loss by the labelled pixels instead of all pixels of the batch
            (False = mmseg's ``CrossEntropyLoss`` default, the published recipe; True = PyTorch's mean, which
            is N_all / N_valid times larger, i.e. a larger effective learning rate).
        lr: SGD base learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        power: poly decay exponent.
        min_lr: poly decay floor.
        max_iters: iterations of the poly schedule; None = ``trainer.max_steps``.
        init_from: seg checkpoint (train.py's, or a ``seg.convert`` output) to start from: matching weights are
            loaded, classifiers whose class count differs are re-initialised, and what was skipped is printed.
        freeze_backbone: keep the backbone fixed (no gradients, BatchNorm statistics frozen).
        compile: ``torch.compile`` the network (in place; checkpoint keys unchanged).
        channels_last: run the network in channels_last memory format (faster convolutions on GPU).
        ignore_index: label value excluded from loss and metrics.
        eval_mode: inference mode of val/test: 'whole' image or 'slide' windows. Val/test always score at the
            ground truth's original size (logits resized bilinearly, as mmseg); see :mod:`seg.evaluation`.
        eval_crop_size: sliding-window crop (H, W).
        eval_stride: sliding-window stride (H, W).
        eval_scales: test-time scales (val/test probabilities are averaged over them); factors of the original
            image size, as mmseg 1.x ``TestTimeAug``.
        eval_flip: add horizontally flipped inputs at test time.
    """

    def __init__(
        self,
        backbone: str = "resnet50c",
        head: str = "fcn",
        num_classes: int = 19,
        output_stride: Literal[8, 16, 32] = 8,
        aux: bool = True,
        aux_weight: float = 0.4,
        weights: Optional[str] = None,
        head_kwargs: Optional[dict[str, Any]] = None,
        backbone_kwargs: Optional[dict[str, Any]] = None,
        loss: LossSpec = LossSpec("ce"),
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
        avg_non_ignore: bool = False,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        power: float = 0.9,
        min_lr: float = 1e-4,
        max_iters: Optional[int] = None,
        init_from: Optional[str] = None,
        freeze_backbone: bool = False,
        compile: bool = False,
        channels_last: bool = True,
        ignore_index: int = 255,
        eval_mode: Literal["whole", "slide"] = "whole",
        eval_crop_size: tuple[int, int] = EvalSettings.crop_size,
        eval_stride: tuple[int, int] = EvalSettings.stride,
        eval_scales: tuple[float, ...] = EvalSettings.scales,
        eval_flip: bool = EvalSettings.flip,
    ) -> None:
        super().__init__()
        loss = str(loss)  # hyper-parameters hold a plain str (checkpoints are read with weights_only=True)
        self.save_hyperparameters()
        # first: a bad loss specification fails before the (possibly slow, downloading) model build
        self.criterion = SegLoss(loss, aux_weight, ignore_index, ohem_thresh, ohem_min_kept, avg_non_ignore)
        from seg.models import build_model  # the only dependency on the models part

        self.model = build_model(
            backbone,
            head,
            num_classes,
            output_stride=output_stride,
            aux=aux,
            weights=weights,
            backbone_kwargs=backbone_kwargs,
            **(head_kwargs or {}),
        )
        if init_from:
            report = load_matching_weights(self.model, init_from)
            rank_zero_info(
                f"init_from {init_from}: loaded {len(report['loaded'])} tensors; re-initialised "
                f"{len(report['shape_mismatch'])} (shape differs): {report['shape_mismatch']}; "
                f"not in checkpoint {len(report['missing'])}: {report['missing'][:10]}; "
                f"unused from checkpoint {len(report['unexpected'])}: {report['unexpected'][:10]}"
            )
            self.init_report = report
        if freeze_backbone:
            self.model.backbone.requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()
        self.scores = {stage: Scores(num_classes, ignore_index) for stage in ("val", "test")}
        self.class_names: list[str] = [f"class_{i}" for i in range(num_classes)]
        self.last_metrics: dict[str, dict[str, Any]] = {}  # stage -> python floats, for callbacks/commands
        # seg.evaluate --report: a seg.report.collect.ReportCollector fed by the test stage (None: nothing extra)
        self.report_collector: Any = None

    @classmethod
    def from_model(cls, model: nn.Module, **hparams: Any) -> "SegmentationModule":
        """A module around an already built network (what :func:`seg.load_model` returns), for evaluation.

        ``hparams`` are this class's arguments (the checkpoint's, with the evaluation settings to use); those that
        describe the network must describe ``model``. The module is constructed on the meta device (no weights
        allocated, nothing downloaded), then holds ``model``.
        """
        hparams = {**hparams, "weights": None, "init_from": None, "compile": False}
        with torch.device("meta"):
            module = cls(**hparams)
        module.model = model
        return module

    # -- forward ------------------------------------------------------------------------------------------
    def _prep(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(self._prep(images))

    def logits(self, images: Tensor) -> Tensor:
        """Main-output logits (B, C, H, W) at input resolution."""
        return self(images)["out"]

    @property
    def eval_settings(self) -> EvalSettings:
        """How validation and test predict (this module's ``eval_*`` arguments)."""
        hp = self.hparams
        return EvalSettings(
            num_classes=hp.num_classes,
            mode=hp.eval_mode,
            crop_size=tuple(hp.eval_crop_size),
            stride=tuple(hp.eval_stride),
            scales=tuple(hp.eval_scales),
            flip=bool(hp.eval_flip),
            ignore_index=hp.ignore_index,
        )

    def train(self, mode: bool = True) -> "SegmentationModule":
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.model.backbone.eval()  # frozen backbone: BatchNorm statistics stay as loaded
        return self

    def on_train_start(self) -> None:
        # Lightning does not call .train() itself; modes are captured/restored per submodule around validation.
        self.train()

    # -- steps --------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "classes", None)
        if names is not None and len(names) == self.hparams.num_classes:
            self.class_names = list(names)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # logits at feature resolution: the loss resizes them without storing full-resolution tensors
        outputs = self.model(self._prep(batch["image"]), resize=False)
        loss, parts = self.criterion(outputs, batch["mask"])
        if not bool(torch.isfinite(loss)):  # one scalar sync per step; the progress bar syncs the loss anyway
            self._diverged(f"training loss is {loss.item()}")
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return loss

    def _diverged(self, what: str) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer is not None else self.hparams.lr
        raise DivergenceError(
            f"{what} at step {self.global_step} (learning rate {lr:.4g}, base --model.lr={self.hparams.lr:g}): the "
            "run diverged, training stopped and no checkpoint was written after this point. Start again with a "
            "lower --model.lr, or check the data (python -m seg.data.check) and the loss settings."
        )

    def on_validation_start(self) -> None:
        # weights and BatchNorm statistics can overflow while the loss is still finite: neither validate (and
        # write summary.json) nor checkpoint them
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            bad = non_finite_keys(self.model.state_dict())
            if bad:
                self._diverged(f"{len(bad)} weight/statistics tensors hold NaN/Inf ({', '.join(bad[:3])})")

    def _eval_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        report = self.report_collector if stage == "test" else None
        if report is None:
            preds = predict_batch(self.logits, batch, self.eval_settings)  # (B, H, W) at the original mask size
        else:  # the report also needs each pixel's top probability (softmax computed only then)
            preds, confidence = predict_batch(self.logits, batch, self.eval_settings, confidence=True)
        counts = self.scores[stage].update(preds, batch["mask"], batch.get("path"))  # padding: ignore, not counted
        if report is not None:
            report.update(preds, confidence, batch, counts)
        return preds

    def on_validation_epoch_start(self) -> None:
        self.scores["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.scores["test"].reset()
        if self.report_collector is not None:
            self.report_collector.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._eval_step(batch, "val")}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._eval_step(batch, "test")}

    def _log_metrics(self, stage: str) -> None:
        scores = self.scores[stage].sync(self.device)  # summed / gathered over all ranks
        summary = {**scores.metrics(self.class_names), "step": int(self.global_step)}
        if self.trainer.sanity_checking:
            return
        if stage == "val":
            self._refuse_unlabelled_validation(scores)
        self.last_metrics[stage] = summary
        # values are already identical on every rank: no sync_dist needed
        self.log(f"{stage}/mIoU", summary["mIoU"], prog_bar=True)
        self.log(f"{stage}/aAcc", summary["aAcc"])
        self.log(f"{stage}/mAcc", summary["mAcc"])
        for name, value in summary["per_class_IoU"].items():
            self.log(f"{stage}/IoU/{name}", value)
        iou, acc = summary["per_class_IoU"].values(), summary["per_class_Acc"].values()
        for logger in self.loggers:  # a per-class table where the logger has tables (W&B)
            if hasattr(logger, "log_table"):
                rows = [[n, i, a] for n, i, a in zip(self.class_names, iou, acc)]
                logger.log_table(
                    key=f"{stage}/per_class", columns=["class", "IoU", "Acc"], data=rows, step=self.global_step
                )

    def _refuse_unlabelled_validation(self, scores: Scores) -> None:
        """A validation pass without one labelled pixel scores nothing: its mIoU is NaN and a "best" checkpoint
        would be chosen on it. Stop with the split named instead (before the checkpoint callbacks run)."""
        if scores.confmat is None or int(scores.confmat.sum()) > 0:
            return
        dm = getattr(self.trainer, "datamodule", None)
        split = f"{getattr(dm, 'val_split', '?')!r} of {getattr(dm, 'root', '?')}"
        raise DataError(
            f"validation split {split} ({len(scores.paths)} images) saw no labelled pixel: every mask pixel is ignore "
            "(255), so val/mIoU would be NaN and no checkpoint can be chosen. Point data.val_split at a labelled "
            "split, or check how its masks are read (python -m seg.data.check --split ...; data.label_map, "
            "data.ignore_index, data.reduce_zero_label)."
        )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        if self.report_collector is not None:
            self.report_collector.sync(self.device)  # every rank, as Scores.sync

    # -- checkpoints --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make every checkpoint self-describing (:mod:`seg.models.checkpoint`): what rebuilds the network and
        what serves it (the data module's classes, palette, normalisation and test scale; the eval settings)."""
        from seg.data.datamodule import test_scale_of
        from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        hp = self.hparams
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        palette = getattr(dm, "palette", None)
        if palette is None or len(palette) != hp.num_classes:
            from seg.data.base import default_palette

            palette = default_palette(hp.num_classes)
        seed = os.environ.get("PL_GLOBAL_SEED")  # train.py's seed_everything
        s = self.eval_settings
        checkpoint[META_KEY] = checkpoint_meta(
            self.model.build_args,
            self.class_names,
            palette,
            mean=getattr(dm, "mean", IMAGENET_MEAN),
            std=getattr(dm, "std", IMAGENET_STD),
            ignore_index=hp.ignore_index,
            eval={"mode": s.mode, "crop_size": s.crop_size, "stride": s.stride, "scales": s.scales, "flip": s.flip},
            test_scale=test_scale_of(dict(dm.hparams)) if dm is not None else None,
            dataset=getattr(dm, "dataset_name", None),
            seed=int(seed) if seed is not None else None,
        )

    # -- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        max_iters = hp.max_iters or (self.trainer.max_steps if self.trainer.max_steps > 0 else None)
        if max_iters is None:
            est = self.trainer.estimated_stepping_batches
            if not math.isfinite(est):
                raise ValueError("set trainer.max_steps (or model.max_iters) for the poly LR schedule")
            max_iters = int(est)
        scheduler = PolyLR(optimizer, max_iters=max_iters, power=hp.power, min_lr=hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
