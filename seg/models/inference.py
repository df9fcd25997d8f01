"""Inference modes for evaluation and prediction: whole image or sliding window, multi-scale and flip.

Sliding-window inference follows mmseg's ``EncoderDecoder.slide_inference``: crops of ``crop_size`` every
``stride`` pixels (the last row/column of crops is aligned to the image border), logits summed and divided by
the number of crops covering each pixel.

**Scoring size.** As mmseg's ``postprocess_result``, logits are resized bilinearly (align_corners=False) to the
*original* image size (``out_size``: that of the ground truth, which is never resized) before the argmax or
softmax; the network input is the image resized to the test scale by the data pipeline.

**Test-time augmentation** (several scales or flip) follows mmseg 1.x ``TestTimeAug`` + ``SegTTAModel``: scale
factor ``r`` applies to the *original* image size, as mmcv ``Resize(scale_factor=r, keep_ratio=True)`` computes
it (:func:`tta_size`, two ``int(x + 0.5)`` roundings), not to the test-scale image; the softmax of each
flip/scale's logits resized to the original size is averaged. The per-scale image resize is ``F.interpolate``
(bilinear) of the normalised original, where mmcv resizes the uint8 image with OpenCV: the sizes are identical,
pixel values differ by OpenCV's uint8 rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seg.deploy.geometry import is_tta, slide_windows, tta_size  # noqa: F401  (re-exported: shared with seg.deploy)

__all__ = [
    "EVAL_DEFAULTS",
    "EvalSettings",
    "LogitsFn",
    "is_tta",
    "predict_labels",
    "predict_logits",
    "predict_probs",
    "resize_logits",
    "slide_logits",
    "slide_windows",
    "tta_size",
]

LogitsFn = Callable[[Tensor], Tensor]  # (B, 3, H, W) -> (B, C, H, W) logits at input resolution


@dataclass(frozen=True)
class EvalSettings:
    """How a model predicts at evaluation: whole image or sliding windows, test-time scales and flip.

    Args:
        num_classes: output channels of the model.
        mode: 'whole' image or 'slide' windows.
        crop_size: slide window (H, W) (mmseg's Cityscapes crop by default).
        stride: slide stride (H, W).
        scales: test-time scale factors of the original image size (mmseg TestTimeAug); (1.0,) = none.
        flip: add horizontally flipped inputs.
        ignore_index: the label value that is never scored.
    """

    num_classes: int
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] = (512, 1024)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"unknown inference mode {self.mode!r}; valid: 'whole', 'slide'")
        for name in ("crop_size", "stride", "scales"):  # lists from configs and checkpoints -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def single_pass(self) -> bool:
        """Whole image, one scale, no flip: the network's logits are the prediction (no averaging)."""
        return self.mode == "whole" and not is_tta(self.scales, self.flip)


#: The defaults of every evaluation setting but ``num_classes`` (what a checkpoint without its own records).
EVAL_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(EvalSettings) if f.name not in ("num_classes", "ignore_index")
}


def slide_logits(
    fn: LogitsFn, images: Tensor, num_classes: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> Tensor:
    """Sliding-window logits (B, C, H, W); images smaller than the crop are run whole."""
    b, _, h, w = images.shape
    logits = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(h, w, crop_size, stride):  # shared with the ONNX path (seg.deploy)
        logits[:, :, y1:y2, x1:x2] += fn(images[:, :, y1:y2, x1:x2]).float()
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def resize_logits(logits: Tensor, out_size: Sequence[int]) -> Tensor:
    """fp32 logits resized bilinearly (align_corners=False) to ``out_size`` (mmseg ``postprocess_result``)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(out_size):
        return logits
    return F.interpolate(logits, size=tuple(int(v) for v in out_size), mode="bilinear", align_corners=False)


def predict_probs(
    fn: LogitsFn,
    images: Tensor,
    num_classes: int,
    mode: Literal["whole", "slide"] = EvalSettings.mode,
    crop_size: tuple[int, int] = EvalSettings.crop_size,
    stride: tuple[int, int] = EvalSettings.stride,
    scales: Sequence[float] = EvalSettings.scales,
    flip: bool = EvalSettings.flip,
    out_size: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities (B, C, *out_size), averaged over ``scales`` x (no flip, flip).

    Args:
        images: (B, 3, h, w) the data pipeline's image: at the test scale, or the original image with TTA
            (the CLI switches ``data.val_mode`` to 'full' then, as mmseg's TTA pipeline loads the original).
        out_size: (H, W) of the original image / ground truth (default: the input size). Logits are resized
            to it before the softmax; with TTA (:func:`is_tta`) scale factors are relative to it
            (:func:`tta_size`): the input is resized to each scale's size bilinearly.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode {mode!r}; valid: 'whole', 'slide'")
    h, w = (int(v) for v in (out_size if out_size is not None else images.shape[-2:]))
    tta = is_tta(scales, flip)
    probs = images.new_zeros((images.shape[0], num_classes, h, w), dtype=torch.float32)
    n = 0
    for scale in scales:
        x = images
        size = tta_size((h, w), scale) if tta else tuple(images.shape[-2:])
        if size != tuple(images.shape[-2:]):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            if mode == "slide":
                logits = slide_logits(fn, xi, num_classes, crop_size, stride)
            else:
                logits = fn(xi).float()
            if flipped:
                logits = logits.flip(-1)
            probs += resize_logits(logits, (h, w)).softmax(dim=1)
            n += 1
    return probs / n


def predict_labels(
    fn: LogitsFn,
    images: Tensor,
    settings: EvalSettings,
    out_size: Sequence[int] | None = None,
    confidence: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Predicted class per pixel (B, *out_size) of ``images`` (B, 3, h, w) with ``settings``; ``out_size`` is the
    original image size the logits are resized to before the argmax (default: the input's), see
    :func:`predict_probs`.

    ``confidence=True`` returns ``(labels, confidence)``: the same labels and each pixel's largest class
    probability (B, *out_size) float32 (with test-time scales/flip: of the averaged probabilities)."""
    size = tuple(int(v) for v in (out_size if out_size is not None else images.shape[-2:]))
    if settings.single_pass:  # argmax(softmax(z)) == argmax(z): no (B, C, H, W) softmax unless asked
        logits = resize_logits(fn(images), size)
        labels = logits.argmax(dim=1)
        return (labels, logits.softmax(dim=1).amax(dim=1)) if confidence else labels
    s = settings
    probs = predict_probs(fn, images, s.num_classes, s.mode, s.crop_size, s.stride, s.scales, s.flip, size)
    return (probs.argmax(1), probs.amax(1)) if confidence else probs.argmax(1)


def predict_logits(
    fn: LogitsFn, images: Tensor, settings: EvalSettings, out_size: Sequence[int] | None = None
) -> Tensor:
    """Logits (B, C, *out_size) of one pass (whole image, or slide windows averaged), resized to ``out_size``
    as :func:`predict_labels` resizes them before the argmax. Test-time scales and flip average *probabilities*
    (mmseg ``SegTTAModel``), so they have no logits: refused (use :func:`predict_probs`)."""
    if is_tta(settings.scales, settings.flip):
        raise ValueError(
            f"logits are one pass's; test-time scales {list(settings.scales)} / flip {settings.flip} average "
            "probabilities: ask for probabilities (output='probs'), or use scales=[1.0] and flip=False"
        )
    size = tuple(int(v) for v in (out_size if out_size is not None else images.shape[-2:]))
    s = settings
    logits = slide_logits(fn, images, s.num_classes, s.crop_size, s.stride) if s.mode == "slide" else fn(images)
    return resize_logits(logits, size)
