"""Reading input images: one decoding rule for training, validation, the decode cache and both ``seg.predict`` paths.

**The rule** (`decode_image`): an image is decoded as it is displayed. Its EXIF orientation (JPEG, PNG eXIf, WebP,
TIFF) is applied, alpha is dropped, greyscale is repeated to RGB and 16-bit is scaled to 8-bit (``// 257``).
`seg.data.base.read_image` (training, validation, the decode cache, ``seg.data.check``) and `read_rgb` (both
``seg.predict`` paths) call it; ``seg.data.png``'s fast path only takes PNGs without an orientation, whose stored
and displayed layouts are the same pixels. Masks are read as stored (``seg.data.base.read_mask``): they are PNGs
without EXIF.

Why the displayed layout: a phone photo is stored sideways with Orientation 6 or 8, and its mask is drawn over the
photo as the annotation tool shows it. Browsers apply the orientation by default (CSS ``image-orientation:
from-image``), and so do CVAT (since 2022), LabelMe and every web labelling tool, so the mask follows the displayed
layout. mmseg reads images the same way (mmcv's ``imfrombytes(flag='color')`` applies it with its cv2 and pillow
backends; ``'color_ignore_orientation'`` is the opt-out), as does OpenCV's default ``imread``. PIL's
``Image.open`` and torchvision's ``read_image`` give the stored layout: masks made from those arrays need rotating,
or the images baked upright (``seg.data.check`` lists every image with an orientation other than 1).

This module never imports torch (``seg.predict --onnx`` runs without it); ``seg.data`` imports it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .headers import read_header

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_PIXELS_HELP", "ImageError", "decode_image", "list_images", "read_rgb"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")  # datasets and seg.predict
# PIL's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, a quarter GiB of 24-bit pixels): a 108 MP phone photo
# needs --max_pixels, a 50 MP one does not. Prediction also holds float logits of this many pixels per class.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # 89,478,485
MAX_PIXELS_HELP = (
    f"refuse images with more pixels (W x H, read from the file's header before decoding; default {MAX_PIXELS}, "
    "PIL's decompression-bomb limit); such an image is skipped like an unreadable one"
)
# OpenCV's IMREAD_UNCHANGED minus alpha, plus the orientation: IMREAD_UNCHANGED is the one flag that never rotates
_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


class ImageError(ValueError):
    """An input image that cannot be used (the message names the file and what to do)."""


def list_images(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the images (`IMAGE_EXTENSIONS`) in the folder, sorted; a clear error if
    there are none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither an image nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    return files


def _too_large(name: str | Path, height: int, width: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"{name}: {width}x{height} (W x H) = {width * height} pixels, more than --max_pixels {max_pixels} allows "
        f"(a guard against decompression bombs); if the image is genuine, raise it: --max_pixels {width * height}"
    )


def decode_image(data: bytes, name: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """An image file's bytes -> (H, W, 3) uint8 RGB in its displayed layout (the module's rule).

    Args:
        data: the file's bytes.
        name: the file, for messages.
        max_pixels: refuse images with more pixels, read from the header before anything is allocated (and checked
            again after decoding, for a format whose header is not read); None: OpenCV's own limit (2^30).

    Raises:
        ImageError: empty, corrupt or unsupported file, or above ``max_pixels``.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes); copy it again or remove it")
    header = read_header(data)
    if max_pixels is not None and header is not None and header.pixels > max_pixels:
        raise _too_large(name, *header.displayed_size, max_pixels)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS)
    if img is None:
        raise ImageError(f"{name}: cannot decode image (corrupt or unsupported format); re-export it as PNG/JPEG")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise _too_large(name, img.shape[0], img.shape[1], max_pixels)
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported image dtype {img.dtype}; expected 8-bit (or 16-bit) RGB")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageError(f"{name}: image has {img.shape[2]} channels; expected greyscale or RGB(A)")


def read_rgb(path: Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, by `decode_image` (``seg.predict``'s reader: limited to ``max_pixels``
    by default, as its inputs may come from anywhere). Raises `ImageError`, or OSError when the file cannot be read."""
    return decode_image(Path(path).read_bytes(), path, max_pixels)
