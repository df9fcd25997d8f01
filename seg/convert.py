"""Convert foreign checkpoints into seg checkpoints.

    python -m seg.convert mmseg ccnet_r101-d8_cityscapes.pth ccnet_r101.ckpt \\
        --head ccnet --backbone resnet101c --num_classes 19

reads an mmsegmentation checkpoint of any head with an mmseg counterpart (ResNetV1c = timm ``resnet50c`` /
``resnet101c``), checks that every key fits (a mismatch lists the keys), and writes a self-describing seg
checkpoint (:mod:`seg.models.checkpoint`: the weights, the ``build_model`` arguments, and the class names, palette,
normalisation and test scale of the benchmark it was trained on, ``--dataset``), which every command accepts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from seg.command_line import ArgParser
from seg.data.meta import dataset_meta
from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg.models import all_head_names, get_head
from seg.models.mmseg import convert_mmseg_checkpoint

__all__ = ["convert_mmseg", "main"]


def convert_mmseg(
    src: str | Path,
    dst: str | Path,
    head: str,
    backbone: str,
    num_classes: int,
    dataset: str | None = None,
    output_stride: int = 8,
    eval: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Path:
    """``python -m seg.convert mmseg``'s conversion, callable (``mmseg:`` zoo names convert through it too): the
    mmseg checkpoint ``src`` as a seg checkpoint ``dst`` carrying the class names, palette and test scale of
    ``dataset`` (None: the benchmark with ``num_classes`` classes), ImageNet normalisation and the evaluation
    settings ``eval`` (mode, crop_size, stride ...). ``kwargs``: further ``build_model`` arguments (``aux``,
    ``aux_channels``, ``backbone_kwargs``, head kwargs)."""
    serving = {**dataset_meta(dataset, num_classes), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "eval": eval}
    return convert_mmseg_checkpoint(
        src,
        dst,
        head=head,
        backbone=backbone,
        num_classes=num_classes,
        serving=serving,
        output_stride=output_stride,
        **kwargs,
    )


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> ArgParser:
    parser = ArgParser(prog="python -m seg.convert", description=__doc__.split("\n")[0], reference=__doc__)
    sub = parser.add_subparsers(dest="source", required=True)
    mm = sub.add_parser(
        "mmseg",
        help="mmsegmentation checkpoint of any head with an mmseg counterpart (--head)",
        description="Convert an mmsegmentation checkpoint (python -m seg.convert --help_all: the details).",
        reference=__doc__,
    )
    mm.add_argument("src", help="mmseg checkpoint (.pth)")
    mm.add_argument("dst", help="seg checkpoint to write (.ckpt)")
    mm.add_argument("--head", required=True, choices=[h for h in all_head_names() if get_head(h).mmseg])
    mm.add_argument("--backbone", required=True, help="timm name: resnet50c / resnet101c for mmseg ResNetV1c")
    mm.add_argument("--num_classes", type=int, required=True, help="19 Cityscapes, 150 ADE20K")
    mm.add_argument(
        "--output_stride",
        type=int,
        default=8,
        choices=[8, 16, 32],
        help="8 for *-d8 configs, 32 for UPerNet (undilated)",
    )
    mm.add_argument(
        "--channels", type=int, default=None, help="decode head width (default: the head's, 512; EMANet 256)"
    )
    mm.add_argument("--aux_channels", type=int, default=256, help="auxiliary head width")
    mm.add_argument("--aux", action="store_const", const=True, default=None, help="keep the auxiliary head")
    mm.add_argument(
        "--no_aux", dest="aux", action="store_const", const=False, help="drop it (default: keep it when present)"
    )
    mm.add_argument(
        "--dataset",
        choices=["cityscapes", "ade20k"],
        default=None,
        help="the benchmark it was trained on: its class names, palette and test scale go into the file "
        "(default: the one with --num_classes classes, 19 cityscapes, 150 ade20k; otherwise generic names)",
    )
    mm.add_argument("--backbone_kwargs", type=_json_dict, default=None, help="extra timm kwargs, JSON")
    mm.add_argument("--head_kwargs", type=_json_dict, default={}, help="extra head kwargs, JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    head_kwargs = dict(args.head_kwargs)
    if args.channels is not None:
        head_kwargs["channels"] = args.channels
    try:
        out = convert_mmseg(
            args.src,
            args.dst,
            head=args.head,
            backbone=args.backbone,
            num_classes=args.num_classes,
            dataset=args.dataset,
            aux=args.aux,
            output_stride=args.output_stride,
            backbone_kwargs=args.backbone_kwargs,
            aux_channels=args.aux_channels,
            **head_kwargs,
        )
    except (ValueError, OSError) as err:  # CheckpointError / missing file / full disk: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
