"""``seg.load(source) -> Segmenter``: a checkpoint as a predictor, in a few lines of Python.

    >>> import seg
    >>> model = seg.load(ckpt, device="cpu")  # any seg checkpoint (train.py's, seg.convert's)
    >>> model  # doctest: +NORMALIZE_WHITESPACE
    Segmenter(head='fcn', backbone='resnet18', classes=5, eval='whole', scales=(1.0,), flip=False,
              test_scale=(40, 56), device='cpu')
    >>> mask = model.predict(image)  # a path: (H, W) class indices at the image's size
    >>> mask.shape, mask.dtype
    ((45, 61), dtype('uint8'))
    >>> probs = model.predict([image, image], mode="slide", scales=[0.75, 1.0, 1.25], flip=True, output="probs")
    >>> [p.shape for p in probs]  # a list in, a list out; (C, H, W) probabilities that sum to 1
    [(5, 45, 61), (5, 45, 61)]
    >>> model.colorize(mask).shape  # RGB in model.palette, one colour per name in model.classes
    (45, 61, 3)

**The prediction is ``seg.predict``'s.** The same loader (:func:`seg.load_model`), the same decoding of image files
(:func:`seg.deploy.images.decode_image`: EXIF orientation applied, as training reads them), the checkpoint's
evaluation transform (:func:`eval_transform`: its test scale, mean and std) and the same inference
(:func:`predict_rgb`, which ``seg.predict`` calls for every image): logits resized to the image's size before the
argmax. On CPU the network runs as ``seg.predict``'s does by default (BatchNorm folded, channels_last:
``optimize=False`` keeps the network as loaded). The checkpoint's evaluation settings (``model.info.eval``) are the
defaults of ``predict``; ``mode``, ``scales``, ``flip``, ``crop_size`` and ``stride`` override them per call.

**Inputs** (one, or a list): an image file path (str or Path); a PIL image (its pixels as they are: a photo's EXIF
orientation is applied only when you pass its path, or ``PIL.ImageOps.exif_transpose`` it first); a numpy
(H, W, 3) RGB array; a torch (3, H, W) or (B, 3, H, W) RGB tensor. Arrays and tensors are uint8 0-255 or float in
[0, 1] (torchvision's convention); tensors on a GPU are copied to the CPU for the transform.

**Outputs** follow the input: numpy arrays for paths, PIL images and numpy arrays; torch tensors on
``model.device`` for tensors. Labels are (H, W) (numpy uint8, torch int64), probabilities and logits (C, H, W)
float32; a (B, 3, H, W) tensor gives (B, H, W) / (B, C, H, W), a list gives a list. ``output='logits'`` is one
pass's (whole, or slide windows averaged): test-time scales and flip average probabilities, so they refuse it.
``batch_size`` images of one size go through the network together (faster on a GPU; the same results to float
rounding).
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seg.data.transforms import build_eval_transform
from seg.deploy.images import ImageError, read_rgb
from seg.deploy.outputs import colorize
from seg.loading import ModelInfo, load_model
from seg.models.inference import EvalSettings, LogitsFn, is_tta, predict_labels, predict_logits, predict_probs

__all__ = ["Output", "Segmenter", "eval_transform", "load", "predict_rgb"]

Output = Literal["labels", "probs", "logits"]
OUTPUTS = ("labels", "probs", "logits")
_ACCEPTED = "an image path, a PIL image, a numpy (H, W, 3) RGB array, a torch (3, H, W) / (B, 3, H, W) tensor"


def eval_transform(info: ModelInfo, settings: EvalSettings) -> Callable[..., dict[str, Any]]:
    """The checkpoint's evaluation transform (albumentations): the image resized to fit its test scale, then
    normalised with its mean/std. With test-time scales or flip the image keeps its size: the scales are of the
    original image (mmseg ``TestTimeAug``; :func:`seg.models.inference.predict_probs` resizes it)."""
    scale = None if is_tta(settings.scales, settings.flip) else info.test_scale
    return build_eval_transform(scale, "resize" if scale is not None else "full", info.mean, info.std)


def predict_rgb(
    fn: LogitsFn,
    images: Sequence[np.ndarray],
    transform: Callable[..., dict[str, Any]],
    settings: EvalSettings,
    device: torch.device | str,
    output: Output = "labels",
) -> Tensor:
    """The prediction of ``seg.predict`` and :meth:`Segmenter.predict` for images of one size.

    Args:
        fn: normalised images (B, 3, h, w) -> logits (B, C, h, w).
        images: (H, W, 3) RGB arrays of one size, uint8 (or float32 on the 0-255 scale).
        transform: the evaluation transform (:func:`eval_transform`, or a data module's ``eval_transform``).
        settings: whole / slide, test-time scales and flip.
        device: where the network runs.
        output: 'labels' (B, H, W) class indices, 'probs' (B, C, H, W) probabilities, or 'logits' (B, C, H, W).

    Returns the prediction at the images' own (H, W), on ``device``: the logits are resized to it before the argmax
    or softmax (the evaluation protocol, :mod:`seg.models.inference`).
    """
    h, w = images[0].shape[:2]
    xs = []
    for rgb in images:
        x = torch.as_tensor(np.ascontiguousarray(transform(image=rgb)["image"])).float()
        if x.ndim == 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)  # (h, w, 3) -> (3, h, w)
        xs.append(x)
    x = torch.stack(xs).to(device)  # (B, 3, h, w)
    s = settings
    with torch.inference_mode():
        if output == "labels":
            return predict_labels(fn, x, s, (h, w))
        if output == "probs":
            return predict_probs(fn, x, s.num_classes, s.mode, s.crop_size, s.stride, s.scales, s.flip, (h, w))
        return predict_logits(fn, x, s, (h, w))


def _pixels(a: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) uint8 as it is, float [0, 1] -> float32 on the 0-255 scale the transform's mean/std are on."""
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        hint = "; greyscale: np.repeat(x[..., None], 3, axis=2)" if a.ndim == 2 else ""
        hint += "; RGBA: x[..., :3]" if a.ndim == 3 and a.shape[2] == 4 else ""
        hint += "; a batch: pass a list of images" if a.ndim == 4 else ""
        raise ImageError(f"{what}: expected an (H, W, 3) RGB image, got shape {tuple(a.shape)}{hint}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ImageError(f"{what}: expected uint8 (0-255) or float (0-1) pixels, got {a.dtype}: x.astype(np.uint8)")
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise ImageError(
            f"{what}: float pixels are RGB in [0, 1], got values in [{lo:g}, {hi:g}]; pass uint8 0-255, or divide "
            "by 255"
        )
    return a.astype(np.float32) * 255


def _as_rgb(image: Any, what: str) -> tuple[np.ndarray, bool]:
    """(H, W, 3) pixels of one input (see the module docstring) and whether it was a tensor."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise ImageError(f"{what}: {path} is a folder; pass a list of its images, or run python -m seg.predict")
        if not path.is_file():
            raise FileNotFoundError(f"{what}: no such image file: {path}")
        return read_rgb(path, max_pixels=None), False  # the one decoding rule (EXIF orientation applied)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            hint = "; an (H, W, 3) tensor: x.permute(2, 0, 1)" if image.ndim == 3 and image.shape[-1] == 3 else ""
            raise ImageError(f"{what}: expected a (3, H, W) RGB tensor, got shape {tuple(image.shape)}{hint}")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise ImageError(f"{what}: expected uint8 (0-255) or float (0-1) pixels, got {image.dtype}")
        pixels = image.detach().permute(1, 2, 0).cpu()  # (H, W, 3)
        return _pixels((pixels if image.dtype == torch.uint8 else pixels.float()).numpy(), what), True
    if isinstance(image, np.ndarray):
        return _pixels(image, what), False
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ImageError(f"{what}: PIL mode {image.mode!r} (16-bit or float); pass the file's path instead")
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
        if orientation not in (1, None):
            warnings.warn(
                f"{what}: the PIL image's EXIF orientation {orientation} is not applied (the prediction matches the "
                "stored pixels); pass the file's path, or PIL.ImageOps.exif_transpose(image), for the displayed "
                "layout that training and seg.predict use",
                stacklevel=3,
            )
        return np.asarray(image.convert("RGB")), False
    raise TypeError(f"{what}: cannot predict a {type(image).__name__}; pass {_ACCEPTED}, or a list of those")


class Segmenter:
    """A checkpoint's model and what serves it (made by :func:`load`): :meth:`predict` images, :meth:`colorize`
    masks. See the module docstring for inputs and outputs.

    Attributes:
        info: the checkpoint's :class:`seg.loading.ModelInfo` (classes, palette, mean/std, test scale, ``eval``).
        classes, palette: class names and their RGB colours, index = class.
        device: where the network runs (:meth:`to` moves it).
        eval_settings: the default inference settings (the checkpoint's ``info.eval``).
    """

    def __init__(
        self, model: nn.Module, info: ModelInfo, device: torch.device | str | None = None, optimize: bool = True
    ) -> None:
        self.info = info
        self.optimize = optimize
        self._network = model  # as loaded: what every device's copy is prepared from
        self.to(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    def to(self, device: torch.device | str) -> "Segmenter":
        """Run on ``device`` (e.g. 'cuda', 'cpu'); returns self. Prepared as ``seg.predict`` prepares its model."""
        from seg.training.module import SegmentationModule
        from seg.training.tool_cli import optimize_for

        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}, but this machine has no CUDA device; use device='cpu'")
        cpu_optimized = self.optimize and device.type == "cpu"  # optimize_for folds BN in place: fold a copy
        network = copy.deepcopy(self._network) if cpu_optimized else self._network
        module = SegmentationModule.from_model(network, **self.info.hparams)  # as tool_cli.build_module
        module.to(device).eval()
        optimize_for(module, device, self.optimize, False)
        self._module, self.device = module, device
        return self

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.info.palette)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def eval_settings(self) -> EvalSettings:
        return self._module.eval_settings

    def _settings(self, **changes: Any) -> EvalSettings:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "scales" in changes:
            scales = changes["scales"]
            scales = (scales,) if isinstance(scales, (int, float)) else tuple(scales)
            if not scales or not all(isinstance(r, (int, float)) and r > 0 for r in scales):
                raise ValueError(f"scales: positive scale factors of the image size, e.g. [0.75, 1.0], got {scales}")
            changes["scales"] = tuple(float(r) for r in scales)
        for key in ("crop_size", "stride"):
            if key in changes:
                value = changes[key]
                value = (value, value) if isinstance(value, int) else tuple(value)
                if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
                    raise ValueError(f"{key}: (H, W) positive integers, got {changes[key]}")
                changes[key] = value
        return replace(self.eval_settings, **changes)

    def predict(
        self,
        images: Any,
        mode: Literal["whole", "slide"] | None = None,
        scales: Sequence[float] | float | None = None,
        flip: bool | None = None,
        output: Output = "labels",
        batch_size: int = 1,
        crop_size: tuple[int, int] | int | None = None,
        stride: tuple[int, int] | int | None = None,
    ) -> Any:
        """Predict one image, a batch tensor or a list of images (see the module docstring for kinds and types).

        Args:
            images: an image path, PIL image, numpy (H, W, 3) array or (3, H, W) / (B, 3, H, W) tensor, or a list.
            mode: 'whole' image or 'slide' windows (default: the checkpoint's).
            scales: test-time scale factors of the image size, e.g. [0.75, 1.0, 1.25] (default: the checkpoint's).
            flip: add horizontally flipped inputs (default: the checkpoint's).
            output: 'labels' (H, W) class indices, 'probs' (C, H, W) probabilities, 'logits' (C, H, W).
            batch_size: how many images of one size go through the network at once.
            crop_size, stride: slide windows (H, W) (default: the checkpoint's).

        Raises:
            FileNotFoundError: a path that does not exist (named). ImageError (a ValueError): an unreadable file, or
            an array / tensor of the wrong shape, dtype or range (what was expected is said). TypeError: another kind.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}; valid: {', '.join(map(repr, OUTPUTS))}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        settings = self._settings(mode=mode, scales=scales, flip=flip, crop_size=crop_size, stride=stride)
        if output == "logits" and is_tta(settings.scales, settings.flip):
            raise ValueError(
                f"output='logits' is one pass's logits; scales {list(settings.scales)} / flip {settings.flip} average "
                "probabilities: use output='probs', or scales=[1.0] and flip=False"
            )
        if isinstance(images, (list, tuple)):
            items = [_as_rgb(image, f"images[{i}]") for i, image in enumerate(images)]
            preds = self._run([rgb for rgb, _ in items], settings, output, batch_size)
            return [self._deliver(p, as_tensor) for p, (_, as_tensor) in zip(preds, items)]
        if isinstance(images, Tensor) and images.ndim == 4:
            rgbs = [_as_rgb(image, f"images[{i}]")[0] for i, image in enumerate(images)]
            if not rgbs:
                raise ImageError("images: an empty (0, 3, H, W) batch")
            return self._deliver(torch.stack(self._run(rgbs, settings, output, batch_size)), True)
        rgb, as_tensor = _as_rgb(images, "image")
        return self._deliver(self._run([rgb], settings, output, 1)[0], as_tensor)

    def _run(self, rgbs: list[np.ndarray], settings: EvalSettings, output: Output, batch_size: int) -> list[Tensor]:
        """Per-image predictions on the device: consecutive images of one size in batches of ``batch_size``."""
        transform = eval_transform(self.info, settings)
        preds: list[Tensor] = []
        i = 0
        while i < len(rgbs):
            j = i + 1
            while j < len(rgbs) and j - i < batch_size and rgbs[j].shape == rgbs[i].shape:
                j += 1
            preds += list(predict_rgb(self._module.logits, rgbs[i:j], transform, settings, self.device, output))
            i = j
        return preds

    def _deliver(self, pred: Tensor, as_tensor: bool) -> Any:
        if as_tensor:
            return pred.clone()  # a normal tensor (inference-mode tensors refuse in-place edits)
        if pred.is_floating_point():
            return pred.cpu().numpy()
        return pred.to(torch.uint8 if self.num_classes <= 256 else torch.int32).cpu().numpy()

    def colorize(self, mask: Any) -> np.ndarray:
        """Class indices (H, W) (numpy or torch; any leading dims) -> (H, W, 3) uint8 RGB in :attr:`palette`, the
        colours ``seg.predict`` writes to ``name_color.png``."""
        label = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"colorize: expected integer class indices, got {label.dtype} (probabilities: argmax)")
        return colorize(label, self.info.palette)

    def __repr__(self) -> str:
        s, info = self.eval_settings, self.info
        slide = f", crop_size={s.crop_size}, stride={s.stride}" if s.mode == "slide" else ""
        return (
            f"Segmenter(head={info.head!r}, backbone={info.backbone!r}, classes={info.num_classes}, eval={s.mode!r}"
            f"{slide}, scales={s.scales}, flip={s.flip}, test_scale={info.test_scale}, device={str(self.device)!r})"
        )


def load(source: str | Path, device: torch.device | str | None = None, optimize: bool = True) -> Segmenter:
    """A checkpoint as a :class:`Segmenter`: ``seg.load(path).predict(image)``.

    Args:
        source: a seg checkpoint (train.py's ``best.ckpt`` / ``last.ckpt``, a ``seg.convert`` output), read by
            :func:`seg.load_model` (whatever it reads, this reads).
        device: 'cuda', 'cpu', ... (default: cuda when there is one).
        optimize: on CPU, fold BatchNorm and run channels_last as ``seg.predict`` does (same predictions to fp32
            rounding); False keeps the network as loaded.

    Raises:
        FileNotFoundError, seg.models.safe_load.CheckpointError: as :func:`seg.load_model`.
    """
    model, info = load_model(source)
    return Segmenter(model, info, device, optimize)
