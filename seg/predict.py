"""Predict masks for a folder of images.

PyTorch:      ``python -m seg.predict --ckpt K INPUT --out DIR [--mode slide] [--scales=[...]] [--flip true]``
ONNX Runtime: ``python -m seg.predict --onnx FILE INPUT --out DIR [--mode slide] [--crop_size=[H,W]] [--stride=[H,W]]``
Both:         ``[--confidence] [--save_probs]`` (how sure the model is, per pixel; below)

For every image ``name.ext`` in INPUT (``seg.deploy.images.IMAGE_EXTENSIONS``: png, jpg, jpeg, tif, tiff, bmp,
webp, the list training reads), writes ``DIR/name.png`` (class-index mask as a palette PNG: indices in PIL and
seg, the class colours in a viewer), ``DIR/name_color.png`` (palette colours) and ``DIR/name_overlay.jpg``
(colours blended over the image), and once ``DIR/legend.png`` (class names and colours). Two inputs with one stem (``x.jpg`` and
``x.png``) would overwrite each other: both are then named after their whole file name, ``x.jpg.png``,
``x.jpg_color.png``, ``x.jpg_overlay.jpg`` and ``x.png.png``, ... (the name still says which input it is, and
stripping the last ``.png`` gives the input's name).

How sure the model is: ``--confidence`` adds ``DIR/name_confidence.png`` (each pixel's highest class probability)
and ``DIR/name_entropy.png`` (the entropy of its class probabilities divided by log C, C classes), heat maps on a
fixed 0..1 scale (viridis and magma: 1/C is a uniform guess's confidence; entropy 0 is certain, 1 all classes
equal), and once ``confidence_legend.png`` and ``entropy_legend.png`` (colour bars). ``--save_probs`` adds
``DIR/name_probs.npy``: the (C, H, W) float32 probabilities at the image's size (``np.load``; 4·C·H·W bytes, e.g.
160 MB for 19 classes at 1024x2048). Both come from the final probabilities (slide windows, scales and flip
averaged; the mask is their argmax), computed by :func:`seg.deploy.outputs.confidence_maps`, as
``seg.confidence_maps(model.predict(image, output="probs"))`` gives them in Python. Their names follow the rule
above (``x.jpg_confidence.png``); without the flags nothing else is written.

Images are decoded as training decodes them (``seg.deploy.images``: EXIF orientation applied, the layout a photo
is displayed and annotated in), so a mask has the size of the image as displayed. They go through the checkpoint's
evaluation transform (resize to its test scale + normalise); the logits are resized back to the original size
before the argmax (the evaluation protocol). ``--mode slide``, ``--scales`` and ``--flip`` work as in
``seg.evaluate``. Classes, palette, normalisation and test scale come from the checkpoint; ``--config`` /
``--data.*`` replace them with those of a data configuration.

A missing INPUT or ``--ckpt`` / ``--onnx`` file is reported before anything is loaded (two lines: what is wrong,
what to type). An image that cannot be read (empty, corrupt, or above ``--max_pixels``, read from its header before decoding;
default 89.5 MP, PIL's decompression-bomb limit) is skipped with a warning; every other prediction is written,
and the command then exits with status 1, listing the skipped files.

``--onnx`` runs a file written by ``python -m seg.export`` with numpy + ONNX Runtime only
(:mod:`seg.deploy.onnx_predict`; it never imports torch): its settings travel in the file's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from seg.command_line import (
    UsageError,
    check_checkpoint_path,
    check_input_path,
    normalize_argv,
    option_value,
    positionals,
    usage_exit,
)
from seg.deploy.images import MAX_PIXELS, MAX_PIXELS_HELP, list_images
from seg.deploy.outputs import CONFIDENCE_HELP, SAVE_PROBS_HELP, SkippedImages, predict_images

__all__ = ["main"]

DESCRIPTION = (
    "Predict masks for a folder of images (or one image): a label PNG, a colour PNG and an overlay per image. "
    "The model and its classes, palette and normalisation come from the checkpoint."
)
PROG = "python -m seg.predict"
USAGE = f"{PROG} --ckpt CKPT INPUT --out DIR [--mode slide] [--device cuda|cpu]   (or --onnx FILE instead of --ckpt)"
EXAMPLE = f"{PROG} --ckpt runs/quickstart/checkpoints/best.ckpt path/to/images --out predictions/"
HELP = [
    "input",
    "--out DIR",
    "--ckpt CKPT",
    "--onnx FILE",
    "--device cuda|cpu",
    "--alpha A",
    "--confidence",
    "--save_probs",
]
HELP_DATA = ["# classes, palette, normalisation (default: the checkpoint's)", "--config FILE", "--data.classes=[...]"]


def _own_arguments(parser) -> None:
    parser.add_argument("input", type=str, help="folder of images (or one image)")
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--device", type=Optional[str], default=None, help="cuda/cpu (default: cuda if any)")
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS, help=MAX_PIXELS_HELP)
    parser.add_argument("--confidence", action="store_true", help=CONFIDENCE_HELP)
    parser.add_argument("--save_probs", action="store_true", help=SAVE_PROBS_HELP)
    parser.add_argument(
        "--onnx",
        type=Optional[str],
        default=None,
        help="run an exported .onnx instead of --ckpt (numpy + ONNX Runtime, no PyTorch); its options: "
        "python -m seg.predict --onnx x --help",
    )


def _main_torch(args: list[str], command_line: bool) -> list[Path]:
    import numpy as np
    import torch

    from seg.data import SegDataModule
    from seg.models.inference import is_tta
    from seg.segmenter import eval_transform, predict_rgb
    from seg.training.tool_cli import (
        INFERENCE_HELP,
        build_module,
        data_given,
        module_hparams,
        optimize_for,
        parse_tool_args,
        tool_parser,
    )

    parser = tool_parser(PROG, DESCRIPTION, USAGE, _own_arguments, trainer=False)
    ns, info = parse_tool_args(parser, args, [*HELP, *INFERENCE_HELP, *HELP_DATA], command_line=command_line)
    images = list_images(Path(ns.input))  # checked by main() before anything was loaded
    module, info = build_module(ns.ckpt, module_hparams(ns, info))
    settings = module.eval_settings
    if data_given(args):  # the data configuration's classes, palette, normalisation and test scale
        data = ns.data.as_dict()
        if is_tta(settings.scales, settings.flip):
            data["val_mode"] = "full"  # TTA scales the original image (mmseg TestTimeAug)
        dm = SegDataModule(**data)
        transform, palette, classes = dm.eval_transform, dm.palette, list(dm.classes)
    else:  # the checkpoint's
        transform, palette = eval_transform(info, settings), info.palette
        classes = list(info.classes)
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device).eval()
    optimize_for(module, device, ns.optimize, ns.bf16)  # CPU: BN folded, channels_last (--optimize), bf16

    output = "probs" if ns.confidence or ns.save_probs else "labels"  # probabilities: the mask is their argmax

    def predict(rgb: np.ndarray) -> np.ndarray:  # the Python API's prediction too (seg.load(...).predict)
        pred = predict_rgb(module.logits, [rgb], transform, settings, device, output)[0]
        return (pred.float() if output == "probs" else pred.byte()).cpu().numpy()

    return predict_images(
        images,
        Path(ns.out),
        predict,
        palette,
        ns.alpha,
        ns.max_pixels,
        classes=classes,
        confidence=ns.confidence,
        save_probs=ns.save_probs,
    )


def check_inputs(argv: list[str]) -> None:
    """What can be checked before torch or the model is loaded: the model file (``--ckpt`` / ``--onnx``) and the
    images (``INPUT``, the first positional argument); ends the process with two lines (what is wrong, what to
    type) if one is missing."""
    found = positionals(argv, ("--crop_size", "--stride"))
    ckpt, onnx = option_value(argv, "--ckpt"), option_value(argv, "--onnx")
    try:
        if onnx is not None:
            check_checkpoint_path(onnx, PROG, argv, "--onnx", ".onnx")
        elif ckpt is not None:
            check_checkpoint_path(ckpt, PROG, argv)
        if found:
            check_input_path(found[0], PROG, argv, EXAMPLE)
            list_images(Path(found[0]))
    except FileNotFoundError as err:
        usage_exit(UsageError(str(err), f"give a folder of images or one image: {EXAMPLE}"))
    except UsageError as err:
        usage_exit(err)


def main(args: Optional[list[str]] = None) -> list[Path]:
    argv = normalize_argv(list(sys.argv[1:] if args is None else args), (), PROG, ("--crop_size", "--stride"))
    if not any(a in ("-h", "--help", "--help_all", "--help-all") for a in argv):
        check_inputs(argv)
    if any(a == "--onnx" or a.startswith("--onnx=") for a in argv):
        from seg.deploy.onnx_predict import main as onnx_main

        return onnx_main(argv)
    return _main_torch(argv, command_line=args is None)


if __name__ == "__main__":
    try:
        main()
    except SkippedImages as err:  # after every readable image was predicted: the list, status 1, no traceback
        sys.exit(f"seg.predict: {err}")
