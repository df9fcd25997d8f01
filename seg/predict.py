"""Predict masks for a folder of images.

PyTorch:      ``python -m seg.predict --config C --ckpt K INPUT --out DIR [--mode slide] [--scales ...] [--flip true]``
ONNX Runtime: ``python -m seg.predict --onnx FILE INPUT --out DIR [--mode slide] [--crop_size H W] [--stride H W]``

For every image ``name.ext`` in INPUT (png/jpg/jpeg/bmp/tif), writes ``DIR/name.png`` (class-index mask),
``DIR/name_color.png`` (palette colours) and ``DIR/name_overlay.jpg`` (colours blended over the image).
Images go through the data config's evaluation transform (resize + normalise); the logits are resized back to
the original size before the argmax (the evaluation protocol). ``--mode slide``, ``--scales`` and ``--flip``
work as in ``seg.evaluate``.

``--onnx`` runs a file written by ``python -m seg.export`` with numpy + ONNX Runtime only
(:mod:`seg.deploy.onnx_predict`; it never imports torch): its settings travel in the file's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from seg.deploy.outputs import IMAGE_EXTS, list_images, read_rgb, write_prediction

__all__ = ["IMAGE_EXTS", "list_images", "main"]  # PredictCLI: module __getattr__ (torch on first use)


def _predict_cli() -> type:
    """The PyTorch path's CLI class (defined on first use: importing this module must not import torch)."""
    from lightning.pytorch.cli import LightningArgumentParser

    from seg.training.tool_cli import SegToolCLI

    class PredictCLI(SegToolCLI):
        description = (
            "Predict masks for a folder of images (or one image): a label PNG and a colour overlay per "
            "image. Model/data/trainer options as in train.py."
        )
        usage = "python -m seg.predict INPUT --out DIR --ckpt CKPT [-c CONFIG] [--mode whole|slide] [--scales ...] ..."

        def add_tool_arguments(self, parser: LightningArgumentParser) -> None:
            parser.add_argument("input", type=str, help="folder of images (or one image)")
            parser.add_argument("--out", type=str, required=True, help="output folder")
            parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
            parser.add_argument("--device", type=Optional[str], default=None, help="cuda/cpu (default: cuda if any)")
            parser.add_argument(
                "--onnx",
                type=Optional[str],
                default=None,
                help="run an exported .onnx instead (no PyTorch): python -m seg.predict --onnx FILE "
                "INPUT --out DIR; see python -m seg.predict --onnx x --help",
            )

    return PredictCLI


def __getattr__(name: str) -> Any:
    if name == "PredictCLI":
        return _predict_cli()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _main_torch(args: Optional[list[str]]) -> list[Path]:
    import numpy as np
    import torch

    cli = _predict_cli()(args=args)
    cfg, module, dm = cli.config, cli.model, cli.datamodule
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device).eval()
    cli.optimize_for(module, device)  # CPU: BN folded, channels_last (--optimize), bf16 (--bf16)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(Path(cfg.input)):
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        image = dm.eval_transform(image=rgb)["image"]
        x = torch.as_tensor(np.ascontiguousarray(image)).float()
        if x.ndim == 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        with torch.inference_mode():  # logits resized to the original (h, w) before the argmax, as evaluation
            label = module.predict_labels(x.unsqueeze(0).to(device), out_size=(h, w))[0].byte().cpu().numpy()
        written.append(write_prediction(out_dir, path.stem, rgb, label, dm.palette, cfg.alpha))
    print(f"wrote {len(written)} masks (+ _color.png, _overlay.jpg) to {out_dir}")
    return written


def main(args: Optional[list[str]] = None) -> list[Path]:
    argv = list(sys.argv[1:] if args is None else args)
    if any(a == "--onnx" or a.startswith("--onnx=") for a in argv):
        from seg.deploy.onnx_predict import main as onnx_main

        return onnx_main(argv)
    return _main_torch(argv)


if __name__ == "__main__":
    main()
