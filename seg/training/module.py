"""SegmentationModule: the Lightning glue around a ``seg.models`` network (held as ``self.model``).

One shared step computes the loss of every output (``out`` + ``aux`` 0.4 + DANet's ``pam``/``cam`` 1.0, see
:mod:`seg.training.losses`), SGD with per-iteration poly decay (mmseg recipe), and a dataset-level confusion
matrix for val/test (:mod:`seg.training.metrics`). Checkpoints store the network under ``model.`` keys, which
is the *seg checkpoint* layout of docs/design.md.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from seg.models.inference import is_tta, predict_probs, resize_logits

from .losses import LossSpec, SegLoss
from .metrics import SegMetrics
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
    """Loads every tensor of a checkpoint whose name and shape match ``model``; the rest keep their init.

    Accepts a seg checkpoint / ``seg.convert`` output (``state_dict`` with ``model.`` keys), or a bare state dict,
    read safely (:func:`seg.models.checkpoint.read_checkpoint`). Returns the report of
    :func:`seg.models.checkpoint.load_matching`.
    """
    from seg.models.checkpoint import load_matching, seg_state_dict

    return load_matching(model, seg_state_dict(path, what="init_from"))


class SegmentationModule(L.LightningModule):
    """Semantic segmentation training/evaluation for any backbone + head of ``seg.models``.

    Args:
        backbone: timm backbone name (``resnet50c`` = mmseg ResNetV1c).
        head: head name in ``seg.models.HEADS`` (fcn, ccnet, danet, nonlocal, axial, ...) or an smp architecture
            ``smp:<Architecture>`` (``seg.models.SMP_HEADS``: smp:Unet, smp:DeepLabV3Plus, ...; no aux head,
            ``output_stride`` as the architecture allows).
        num_classes: number of classes (the CLI links it from ``data.num_classes``).
        output_stride: backbone output stride (8 = the "-D8" recipes; 32 = undilated, UPerNet).
        aux: add the auxiliary FCN head on stage 3.
        aux_weight: loss weight of the auxiliary output (0.4); other outputs weigh 1.0.
        weights: backbone weights: None (random), 'imagenet', or a local .pth/.safetensors path.
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
        init_from: seg checkpoint (or converted mmseg one) to start from: matching weights are loaded,
            classifiers whose class count differs are re-initialised, and what was skipped is printed.
        freeze_backbone: keep the backbone fixed (no gradients, BatchNorm statistics frozen).
        compile: ``torch.compile`` the network (in place; checkpoint keys unchanged).
        channels_last: run the network in channels_last memory format (faster convolutions on GPU).
        ignore_index: label value excluded from loss and metrics.
        eval_mode: inference mode of val/test: 'whole' image or 'slide' windows. Val/test always score at the
            ground truth's original size (logits resized bilinearly, as mmseg); see :meth:`eval_predictions`.
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
        eval_crop_size: tuple[int, int] = (512, 1024),
        eval_stride: tuple[int, int] = (341, 341),
        eval_scales: tuple[float, ...] = (1.0,),
        eval_flip: bool = False,
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
        self.val_metrics = SegMetrics(num_classes, ignore_index)
        self.test_metrics = SegMetrics(num_classes, ignore_index)
        self.class_names: list[str] = [f"class_{i}" for i in range(num_classes)]
        self.last_metrics: dict[str, dict[str, Any]] = {}  # stage -> python floats, for callbacks/commands
        self._eval_images = 0

    # -- forward ------------------------------------------------------------------------------------------
    def _prep(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(self._prep(images))

    def logits(self, images: Tensor) -> Tensor:
        """Main-output logits (B, C, H, W) at input resolution."""
        return self(images)["out"]

    @property
    def _single_pass_eval(self) -> bool:
        """Whole image, one scale, no flip: the network's logits are the prediction (no averaging)."""
        hp = self.hparams
        return hp.eval_mode == "whole" and not is_tta(hp.eval_scales, hp.eval_flip)

    def predict_probs(self, images: Tensor, out_size: Optional[tuple[int, int]] = None) -> Tensor:
        """Probabilities (B, C, *out_size) with this module's eval mode / scales / flip for test-scale
        ``images``; ``out_size`` is the original image size (default: the input's), see
        :func:`seg.models.inference.predict_probs`."""
        hp = self.hparams
        out_size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
        if self._single_pass_eval:
            return resize_logits(self.logits(images), out_size).softmax(1)
        return predict_probs(
            self.logits,
            images,
            hp.num_classes,
            hp.eval_mode,
            tuple(hp.eval_crop_size),
            tuple(hp.eval_stride),
            tuple(hp.eval_scales),
            hp.eval_flip,
            out_size=out_size,
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
            from seg.models.checkpoint import non_finite_keys

            bad = non_finite_keys(self.model.state_dict())
            if bad:
                self._diverged(f"{len(bad)} weight/statistics tensors hold NaN/Inf ({', '.join(bad[:3])})")

    def predict_labels(self, images: Tensor, out_size: Optional[tuple[int, int]] = None) -> Tensor:
        """Predicted class per pixel (B, *out_size) with this module's eval mode / scales / flip (see
        :meth:`predict_probs`)."""
        out_size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
        if self._single_pass_eval:  # argmax(softmax(z)) == argmax(z): no (B, C, H, W) softmax
            return resize_logits(self.logits(images), out_size).argmax(dim=1)
        return self.predict_probs(images, out_size).argmax(dim=1)

    def eval_predictions(self, batch: dict[str, Any]) -> Tensor:
        """Predictions (B, H, W) in the layout of ``batch['mask']``: each image's at its ground truth's original
        size, 255 where the mask is padding.

        The mmseg protocol: the network sees the image resized to the test scale (``batch['image']``, padded
        bottom/right to the batch's largest), the ground truth keeps its original size (``batch['mask']``), and
        the logits are resized bilinearly to that size. ``batch['img_shape']`` / ``batch['ori_shape']`` (B, 2)
        give each sample's unpadded sizes (absent: the full tensors). A batch of one size runs as one forward;
        mixed sizes (ADE20K with val_batch_size > 1) run image by image, so no prediction is made on padding.
        """
        images, masks = batch["image"], batch["mask"]
        b = images.shape[0]
        img_shapes = _shapes(batch.get("img_shape"), images.shape[-2:], b)
        ori_shapes = _shapes(batch.get("ori_shape"), masks.shape[-2:], b)
        if len(set(img_shapes)) == 1 and len(set(ori_shapes)) == 1:
            (h, w), (oh, ow) = img_shapes[0], ori_shapes[0]
            preds = self.predict_labels(images[..., :h, :w], (oh, ow))  # (B, oh, ow)
            if (oh, ow) == tuple(masks.shape[-2:]):
                return preds
            out = masks.new_full(masks.shape, self.hparams.ignore_index)
            out[:, :oh, :ow] = preds
            return out
        out = masks.new_full(masks.shape, self.hparams.ignore_index)
        for i, ((h, w), (oh, ow)) in enumerate(zip(img_shapes, ori_shapes)):
            out[i, :oh, :ow] = self.predict_labels(images[i : i + 1, :, :h, :w], (oh, ow))[0]
        return out

    def _eval_step(self, batch: dict[str, Any], metrics: SegMetrics) -> Tensor:
        preds = self.eval_predictions(batch)  # (B, H, W) at the original mask size; padding 255
        metrics.update(preds, batch["mask"])  # padding is 255 in the mask: never counted
        self._eval_images += preds.shape[0]
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._eval_step(batch, self.val_metrics)}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._eval_step(batch, self.test_metrics)}

    def _log_metrics(self, stage: str, metrics: SegMetrics) -> None:
        res = metrics.compute()  # summed over all ranks
        metrics.reset()
        images = torch.tensor(float(self._eval_images), device=self.device)
        self._eval_images = 0
        images = int(self.trainer.strategy.reduce(images, reduce_op="sum").item())
        iou, acc = res["IoU"].tolist(), res["Acc"].tolist()
        summary = {
            "mIoU": float(res["mIoU"]),
            "aAcc": float(res["aAcc"]),
            "mAcc": float(res["mAcc"]),
            "per_class_IoU": dict(zip(self.class_names, iou)),
            "per_class_Acc": dict(zip(self.class_names, acc)),
            "step": int(self.global_step),
            "num_images": images,
        }
        if self.trainer.sanity_checking:
            return
        self.last_metrics[stage] = summary
        # values are already identical on every rank: no sync_dist needed
        self.log(f"{stage}/mIoU", summary["mIoU"], prog_bar=True)
        self.log(f"{stage}/aAcc", summary["aAcc"])
        self.log(f"{stage}/mAcc", summary["mAcc"])
        for name, value in summary["per_class_IoU"].items():
            self.log(f"{stage}/IoU/{name}", float("nan") if value is None else value)
        for logger in self.loggers:  # a per-class table where the logger has tables (W&B)
            if hasattr(logger, "log_table"):
                rows = [[n, i, a] for n, i, a in zip(self.class_names, iou, acc)]
                logger.log_table(
                    key=f"{stage}/per_class", columns=["class", "IoU", "Acc"], data=rows, step=self.global_step
                )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

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


def _shapes(sizes: Optional[Tensor], default: torch.Size, batch: int) -> list[tuple[int, int]]:
    """Per-sample (H, W) from a (B, 2) size tensor of the batch, or the tensor's own size for every sample."""
    if sizes is None:
        return [tuple(int(v) for v in default)] * batch
    return [(int(h), int(w)) for h, w in sizes.tolist()]
