"""Inference modes for evaluation and prediction: whole image or sliding window, multi-scale and flip.

Sliding-window inference follows mmseg's ``EncoderDecoder.slide_inference``: crops of ``crop_size`` every
``stride`` pixels (the last row/column of crops is aligned to the image border), logits summed and divided by
the number of crops covering each pixel. Test-time augmentation averages softmax probabilities over scales
and horizontal flips (mmseg ``aug_test``).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seg.deploy.geometry import scaled_size, slide_windows

LogitsFn = Callable[[Tensor], Tensor]  # (B, 3, H, W) -> (B, C, H, W) logits at input resolution


def slide_logits(fn: LogitsFn, images: Tensor, num_classes: int, crop_size: tuple[int, int],
                 stride: tuple[int, int]) -> Tensor:
    """Sliding-window logits (B, C, H, W); images smaller than the crop are run whole."""
    b, _, h, w = images.shape
    logits = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(h, w, crop_size, stride):  # shared with the ONNX path (seg.deploy)
        logits[:, :, y1:y2, x1:x2] += fn(images[:, :, y1:y2, x1:x2]).float()
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict_probs(fn: LogitsFn, images: Tensor, num_classes: int, mode: Literal["whole", "slide"] = "whole",
                  crop_size: tuple[int, int] = (512, 1024), stride: tuple[int, int] = (341, 341),
                  scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities (B, C, H, W), averaged over ``scales`` x (no flip, flip)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode {mode!r}; valid: 'whole', 'slide'")
    h, w = images.shape[-2:]
    probs = images.new_zeros((images.shape[0], num_classes, h, w), dtype=torch.float32)
    n = 0
    for scale in scales:
        x = images
        if scale != 1.0:
            size = scaled_size(h, w, scale)
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            if mode == "slide":
                logits = slide_logits(fn, xi, num_classes, crop_size, stride)
            else:
                logits = fn(xi).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs += logits.softmax(dim=1)
            n += 1
    return probs / n
