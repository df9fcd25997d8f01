"""Segmentation with an exported ONNX model on numpy + ONNX Runtime: ``python -m seg.predict --onnx``.

    python -m seg.predict --onnx model.onnx IMAGES --out DIR [--mode whole|slide] [--crop_size=[H,W]]
        [--stride=[H,W]] [--alpha 0.5] [--threads N] [--max_pixels N] [--confidence] [--save_probs]

No torch import anywhere on this path. Every setting (normalisation, evaluation resize, whole / slide,
crop, stride, scales, flip, palette) comes from the file's metadata (``seg.deploy.metadata``), so the
masks are those ``python -m seg.predict --ckpt`` writes for the same checkpoint and config: the same
pipeline step by step (``seg.models.inference.predict_probs``), with the shared window arithmetic of
``seg.deploy.geometry``. Resizes use OpenCV's bilinear (the same half-pixel rule as
``F.interpolate(align_corners=False)``), so probabilities agree to float rounding, not bit for bit. As there,
logits are resized to the image's own size before the softmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from seg.command_line import ArgParser, hw

from .geometry import is_tta, rescale_size, slide_windows, tta_size
from .images import MAX_PIXELS, MAX_PIXELS_HELP, list_images
from .metadata import decode
from .outputs import CONFIDENCE_HELP, SAVE_PROBS_HELP, predict_images

__all__ = ["OnnxSegmenter", "main"]


def _resize_chw(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel, no antialiasing) resize of (C, H, W) float32 to size (H', W')."""
    h, w = size
    if a.shape[1:] == (h, w):
        return a
    parts = [
        cv2.resize(np.ascontiguousarray(a[i : i + 128].transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
        for i in range(0, a.shape[0], 128)
    ]  # OpenCV 5 takes at most 128 channels per call
    parts = [p[:, :, None] if p.ndim == 2 else p for p in parts]  # a 1-channel result loses its axis
    return np.concatenate(parts, axis=2).transpose(2, 0, 1)  # (C, H', W')


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of (C, H, W), in float32."""
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


class OnnxSegmenter:
    """An exported seg model in an ONNX Runtime session, with its preprocessing and inference settings.

    Args:
        path: ``.onnx`` file written by ``python -m seg.export --format onnx``.
        threads: intra-op threads of ONNX Runtime (``None``: its default, all cores).
        overrides: replace metadata settings (``eval_mode``, ``crop_size``, ``stride``).
    """

    def __init__(self, path: str | Path, threads: int | None = None, overrides: dict[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "seg.predict --onnx needs onnxruntime: pip install onnxruntime (or pip install -e '.[export]')"
            ) from err
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--onnx {path} does not exist (write one with python -m seg.export)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
            raise ValueError(
                f"--onnx {path} is not a model ONNX Runtime can load ({str(err).splitlines()[0][:200]}); write one "
                "with python -m seg.export --format onnx"
            ) from err
        self.meta = decode(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.meta.update({k: v for k, v in (overrides or {}).items() if v is not None})
        self.input_name = self.session.get_inputs()[0].name
        self.mean = np.asarray(self.meta["mean"], dtype=np.float32)
        self.std = np.asarray(self.meta["std"], dtype=np.float32)
        self.palette = [tuple(c) for c in self.meta["palette"]]
        m = self.meta
        if m["eval_mode"] not in ("whole", "slide"):
            raise ValueError(f"unknown inference mode {m['eval_mode']!r}; valid: 'whole', 'slide'")
        if m["output"] == "labels" and (m["eval_mode"] != "whole" or list(m["scales"]) != [1.0] or m["flip"]):
            raise ValueError(
                f"{path} outputs class labels (exported with --argmax): slide windows, scales and flip "
                "average logits; export without --argmax for them"
            )

    # -- preprocessing ------------------------------------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the evaluation transform's image: keep-ratio resize to the test scale (bilinear,
        as ``EvalResize``; skipped under TTA, whose scales apply to the original image as in mmseg 1.x), then
        normalised float32 (H', W', 3) - or uint8 when the graph normalises."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        if self.meta["test_scale"] is not None and not is_tta(self.meta["scales"], self.meta["flip"]):
            h, w = rgb.shape[:2]
            size = rescale_size(h, w, tuple(self.meta["test_scale"]))  # (H, W)
            if (h, w) != size:
                rgb = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR)
        if self.meta["normalize_baked"]:
            return rgb
        return (rgb.astype(np.float32) - self.mean) / self.std

    # -- network ------------------------------------------------------------------------------------------
    def run(self, image: np.ndarray) -> np.ndarray:
        """The network on one prepared (H, W, 3) image: logits (C, H, W) float32, or labels (H, W)."""
        h, w = image.shape[:2]
        if not self.meta["dynamic"] and [h, w] != list(self.meta["traced_size"]):
            th, tw = self.meta["traced_size"]
            raise ValueError(
                f"the model was exported for {th}x{tw} inputs only, got {h}x{w}: export it with "
                f"--dynamic, or with --size {h} {w}"
            )
        if self.meta["normalize_baked"]:
            x = np.ascontiguousarray(image[None])  # (1, H, W, 3) uint8
        else:
            x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # (1, 3, H, W)
        return self.session.run(None, {self.input_name: x})[0][0]

    def _logits(self, image: np.ndarray) -> np.ndarray:
        """Whole-image or sliding-window logits (C, H, W) of a prepared image."""
        if self.meta["eval_mode"] == "whole":
            return self.run(image).astype(np.float32)
        h, w = image.shape[:2]
        logits = np.zeros((self.meta["num_classes"], h, w), dtype=np.float32)
        count = np.zeros((h, w), dtype=np.float32)
        for y1, y2, x1, x2 in slide_windows(h, w, tuple(self.meta["crop_size"]), tuple(self.meta["stride"])):
            logits[:, y1:y2, x1:x2] += self.run(image[y1:y2, x1:x2])
            count[y1:y2, x1:x2] += 1
        return logits / count

    def probs(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Class probabilities (C, *out_size) of a prepared image, averaged over scales x flips; each pass's logits
        are resized to ``out_size`` (default: the image's) before the softmax (``seg.models.inference.predict_probs``).
        """
        ih, iw = image.shape[:2]
        h, w = out_size if out_size is not None else (ih, iw)
        probs = np.zeros((self.meta["num_classes"], h, w), dtype=np.float32)
        n = 0
        tta = is_tta(self.meta["scales"], self.meta["flip"])
        for scale in self.meta["scales"]:
            x = image
            sh, sw = tta_size((h, w), scale) if tta else (ih, iw)  # as seg.models.inference.predict_probs
            if (sh, sw) != (ih, iw):
                x = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
            for flipped in (False, True) if self.meta["flip"] else (False,):
                xi = np.ascontiguousarray(x[:, ::-1]) if flipped else x
                logits = self._logits(xi)
                if flipped:
                    logits = logits[:, :, ::-1]
                probs += _softmax(_resize_chw(np.ascontiguousarray(logits), (h, w)))
                n += 1
        return probs / n

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Class index (H, W) for an (H, W, 3) uint8 RGB image, at its own size."""
        h, w = rgb.shape[:2]
        if self.meta["output"] == "labels":
            label = self.run(self.prepare(rgb)).astype(np.uint8)  # (H', W')
            return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST) if label.shape != (h, w) else label
        return self.predict_probs(rgb).argmax(axis=0)

    def predict_probs(self, rgb: np.ndarray) -> np.ndarray:
        """Class probabilities (C, H, W) float32 for an (H, W, 3) uint8 RGB image, at its own size."""
        if self.meta["output"] == "labels":
            raise ValueError(
                "the model outputs class labels (exported with --argmax): no probabilities for --confidence / "
                "--save_probs; export without --argmax for them"
            )
        return self.probs(self.prepare(rgb), rgb.shape[:2])


def build_parser() -> ArgParser:
    p = ArgParser(
        prog="python -m seg.predict --onnx",
        description=__doc__.split("\n")[0],
        reference=__doc__,
        pairs=("--crop_size", "--stride"),
    )
    p.add_argument("--onnx", required=True, help="model written by python -m seg.export --format onnx")
    p.add_argument("input", help="folder of images (or one image)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="inference mode (default: the file's)")
    p.add_argument("--crop_size", type=hw, metavar="[H,W]", default=None, help="slide crop (default: the file's)")
    p.add_argument("--stride", type=hw, metavar="[H,W]", default=None, help="slide stride (default: the file's)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--max_pixels", type=int, default=MAX_PIXELS, help=MAX_PIXELS_HELP)
    p.add_argument("--confidence", action="store_true", help=CONFIDENCE_HELP)
    p.add_argument("--save_probs", action="store_true", help=SAVE_PROBS_HELP)
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seg = OnnxSegmenter(
            args.onnx,
            threads=args.threads,
            overrides={
                "eval_mode": args.mode,
                "crop_size": None if args.crop_size is None else list(args.crop_size),
                "stride": None if args.stride is None else list(args.stride),
            },
        )
    except (ValueError, OSError) as err:  # not an ONNX file, no seg metadata, a bad setting: two lines
        parser.error(str(err))
    uncertainty = args.confidence or args.save_probs
    if uncertainty and seg.meta["output"] == "labels":
        flag = "--confidence" if args.confidence else "--save_probs"
        parser.error(f"{flag}: {args.onnx} outputs class labels (exported with --argmax); export without --argmax")
    images = list_images(Path(args.input))
    return predict_images(
        images,
        Path(args.out),
        seg.predict_probs if uncertainty else seg.predict,
        seg.palette,
        args.alpha,
        args.max_pixels,
        " (ONNX Runtime, no PyTorch)",
        classes=seg.meta.get("classes"),
        confidence=args.confidence,
        save_probs=args.save_probs,
    )
