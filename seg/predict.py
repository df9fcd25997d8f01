"""Predict masks for a folder of images: ``python -m seg.predict --config C --ckpt K INPUT_DIR --out DIR``.

For every image ``name.ext`` in INPUT_DIR (png/jpg/jpeg/bmp/tif), writes ``DIR/name.png`` (class-index mask),
``DIR/name_color.png`` (palette colours) and ``DIR/name_overlay.jpg`` (colours blended over the image).
Images go through the data config's evaluation transform (resize + normalise); the logits are resized back to
the original size before the argmax (the evaluation protocol). ``--mode slide``, ``--scales`` and ``--flip`` work as in ``seg.evaluate``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from lightning.pytorch.cli import LightningArgumentParser

from seg.training.cli import SegToolCLI

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class PredictCLI(SegToolCLI):
    def add_tool_arguments(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("input", type=str, help="folder of images (or one image)")
        parser.add_argument("--out", type=str, required=True, help="output folder")
        parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
        parser.add_argument("--device", type=Optional[str], default=None, help="cuda/cpu (default: cuda if any)")


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither an image nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
    return files


def main(args: Optional[list[str]] = None) -> list[Path]:
    cli = PredictCLI(args=args)
    cfg, module, dm = cli.config, cli.model, cli.datamodule
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(device).eval()
    palette = np.array(dm.palette, dtype=np.uint8)  # (C, 3) RGB
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(Path(cfg.input)):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: cannot read image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        image = dm.eval_transform(image=rgb)["image"]
        x = torch.as_tensor(np.ascontiguousarray(image)).float()
        if x.ndim == 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        with torch.inference_mode():  # logits resized to the original (h, w) before the argmax, as evaluation
            label = module.predict_labels(x.unsqueeze(0).to(device), out_size=(h, w))[0].byte().cpu().numpy()
        color = palette[label]  # (H, W, 3) RGB
        overlay = (rgb * (1 - cfg.alpha) + color * cfg.alpha).astype(np.uint8)
        cv2.imwrite(str(out_dir / f"{path.stem}.png"), label)
        cv2.imwrite(str(out_dir / f"{path.stem}_color.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out_dir / f"{path.stem}_overlay.jpg"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        written.append(out_dir / f"{path.stem}.png")
    print(f"wrote {len(written)} masks (+ _color.png, _overlay.jpg) to {out_dir}")
    return written


if __name__ == "__main__":
    main()
