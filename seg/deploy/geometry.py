"""Pure-Python image geometry shared by the PyTorch and the ONNX inference paths (no torch, no numpy).

One implementation each of: the evaluation resize (mmcv ``imrescale``'s keep-ratio size), the sliding
windows of mmseg's ``slide_inference`` and the size of a test-time scale, so ``seg.models.inference``
(tensors) and ``seg.deploy.onnx_predict`` (numpy) cannot drift apart.
"""

from __future__ import annotations

__all__ = ["is_tta", "rescale_size", "slide_windows", "tta_size"]


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """Keep-ratio size (H, W) of a `height` x `width` image that fits the scale (H, W), e.g. (1024, 2048): long
    edge <= max(scale), short edge <= min(scale), so a portrait image fits the same scale (mmcv ``imrescale``;
    mmcv writes the scale as (W, H), which gives the same size)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def tta_size(ori_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of an image of original size ``ori_size`` (H, W) under mmcv ``Resize(scale_factor=scale,
    keep_ratio=True)`` (mmseg 1.x ``TestTimeAug``): the scaled size ``int(x * scale + 0.5)`` is taken as a
    keep-ratio bound (mmcv ``rescale_size``), whose factor is applied with ``int(x * factor + 0.5)`` again.
    Python's ``round`` would differ at x.5 (banker's rounding) and the second rounding can move a pixel."""
    h, w = int(ori_size[0]), int(ori_size[1])
    bound_w, bound_h = int(w * float(scale) + 0.5), int(h * float(scale) + 0.5)  # mmcv _scale_size
    factor = min(max(bound_w, bound_h) / max(h, w), min(bound_w, bound_h) / min(h, w))  # mmcv rescale_size
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def is_tta(scales, flip: bool) -> bool:
    """Several scales or flips: mmseg's TTA pipeline (sizes from the original image) instead of its test one."""
    return bool(flip) or tuple(float(s) for s in scales) != (1.0,)


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Crops ``(y1, y2, x1, x2)`` of mmseg's sliding-window inference.

    Crops of ``crop_size`` (clipped to the image) every ``stride`` pixels; the last row / column of crops
    is aligned to the bottom / right border, so every pixel is covered and no crop is padded. An image
    smaller than the crop is one window.
    """
    ch, cw = min(crop_size[0], height), min(crop_size[1], width)
    sh, sw = stride
    if sh < 1 or sw < 1:
        raise ValueError(f"slide stride must be >= 1, got {tuple(stride)}")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows
