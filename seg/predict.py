"""Predict masks for a folder of images.

PyTorch:      ``python -m seg.predict --ckpt K INPUT --out DIR [--mode slide] [--scales ...] [--flip true]``
ONNX Runtime: ``python -m seg.predict --onnx FILE INPUT --out DIR [--mode slide] [--crop_size H W] [--stride H W]``

For every image ``name.ext`` in INPUT (``seg.deploy.images.IMAGE_EXTENSIONS``: png, jpg, jpeg, tif, tiff, bmp,
webp, the list training reads), writes ``DIR/name.png`` (class-index mask), ``DIR/name_color.png`` (palette
colours) and ``DIR/name_overlay.jpg`` (colours blended over the image). Two inputs with one stem (``x.jpg`` and
``x.png``) would overwrite each other: both are then named after their whole file name, ``x.jpg.png``,
``x.jpg_color.png``, ``x.jpg_overlay.jpg`` and ``x.png.png``, ... (the name still says which input it is, and
stripping the last ``.png`` gives the input's name).

Images are decoded as training decodes them (``seg.deploy.images``: EXIF orientation applied, the layout a photo
is displayed and annotated in), so a mask has the size of the image as displayed. They go through the checkpoint's
evaluation transform (resize to its test scale + normalise); the logits are resized back to the original size
before the argmax (the evaluation protocol). ``--mode slide``, ``--scales`` and ``--flip`` work as in
``seg.evaluate``. Classes, palette, normalisation and test scale come from the checkpoint; ``--config`` /
``--data.*`` replace them with those of a data configuration.

An image that cannot be read (empty, corrupt, or above ``--max-pixels``, read from its header before decoding;
default 89.5 MP, PIL's decompression-bomb limit) is skipped with a warning; every other prediction is written,
and the command then exits with status 1, listing the skipped files.

``--onnx`` runs a file written by ``python -m seg.export`` with numpy + ONNX Runtime only
(:mod:`seg.deploy.onnx_predict`; it never imports torch): its settings travel in the file's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from seg.deploy.images import MAX_PIXELS, MAX_PIXELS_HELP, list_images
from seg.deploy.outputs import SkippedImages, predict_images

__all__ = ["main"]

DESCRIPTION = (
    "Predict masks for a folder of images (or one image): a label PNG, a colour PNG and an overlay per image. "
    "The model and its classes, palette and normalisation come from the checkpoint."
)
USAGE = "python -m seg.predict INPUT --out DIR --ckpt CKPT [--mode whole|slide] [--scales ...] [--device cuda|cpu]"


def _own_arguments(parser) -> None:
    parser.add_argument("input", type=str, help="folder of images (or one image)")
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--device", type=Optional[str], default=None, help="cuda/cpu (default: cuda if any)")
    parser.add_argument("--max-pixels", "--max_pixels", type=int, default=MAX_PIXELS, help=MAX_PIXELS_HELP)
    parser.add_argument(
        "--onnx",
        type=Optional[str],
        default=None,
        help="run an exported .onnx instead (no PyTorch): python -m seg.predict --onnx FILE INPUT --out DIR; see "
        "python -m seg.predict --onnx x --help",
    )


def _main_torch(args: Optional[list[str]]) -> list[Path]:
    import numpy as np
    import torch

    from seg.data import SegDataModule
    from seg.models.inference import is_tta
    from seg.segmenter import eval_transform, predict_rgb
    from seg.training.tool_cli import (
        build_module,
        data_given,
        module_hparams,
        optimize_for,
        parse_tool_args,
        tool_parser,
    )

    parser = tool_parser(DESCRIPTION, USAGE, _own_arguments, trainer=False)
    ns, info = parse_tool_args(parser, args)
    images = list_images(Path(ns.input))  # before the (slow) model build: a wrong path fails at once
    module, info = build_module(ns.ckpt, module_hparams(ns, info))
    settings = module.eval_settings
    if data_given(args):  # the data configuration's classes, palette, normalisation and test scale
        data = ns.data.as_dict()
        if is_tta(settings.scales, settings.flip):
            data["val_mode"] = "full"  # TTA scales the original image (mmseg TestTimeAug)
        dm = SegDataModule(**data)
        transform, palette = dm.eval_transform, dm.palette
    else:  # the checkpoint's
        transform, palette = eval_transform(info, settings), info.palette
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device).eval()
    optimize_for(module, device, ns.optimize, ns.bf16)  # CPU: BN folded, channels_last (--optimize), bf16

    def predict(rgb: np.ndarray) -> np.ndarray:  # the Python API's prediction too (seg.load(...).predict)
        return predict_rgb(module.logits, [rgb], transform, settings, device)[0].byte().cpu().numpy()

    return predict_images(images, Path(ns.out), predict, palette, ns.alpha, ns.max_pixels)


def main(args: Optional[list[str]] = None) -> list[Path]:
    argv = list(sys.argv[1:] if args is None else args)
    if any(a == "--onnx" or a.startswith("--onnx=") for a in argv):
        from seg.deploy.onnx_predict import main as onnx_main

        return onnx_main(argv)
    return _main_torch(args)


if __name__ == "__main__":
    try:
        main()
    except SkippedImages as err:  # after every readable image was predicted: the list, status 1, no traceback
        sys.exit(f"seg.predict: {err}")
