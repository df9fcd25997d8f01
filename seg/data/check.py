"""Scan a dataset and report every problem at once, plus class pixel frequencies and image sizes.

    python -m seg.data.check --dataset folder --root data/demo --split train
    python -m seg.data.check --dataset cityscapes --root /data/cityscapes --split val
    python -m seg.data.check --dataset folder --root my_data --split train --classes bg,road,car \
        --palette "0,0,0;128,64,128;0,0,142"
    python -m seg.data.check --dataset folder --root lesions --split train --label_map 255:1   # 0/255 masks

Exit code 0 when the split is clean, 1 when any problem was found (each printed with its file). Besides broken
files, the labels themselves (`seg.data.labels`): a split without any labelled pixel, and a class that looks
hidden as ignore (binary masks exported as 0/255 without ``--label_map 255:1``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from seg.command_line import ArgParser

from .base import IGNORE_INDEX, DataError, SegDataset
from .labels import LabelStats, label_problems


@dataclass
class Report:
    """What `scan` found: problems (one line each, naming the file), pixel counts per class, image sizes (H, W)."""

    dataset: SegDataset | None
    problems: list[str] = field(default_factory=list)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    sizes: Counter = field(default_factory=Counter)
    checked: int = 0

    def format(self) -> str:
        lines = []
        ds = self.dataset
        if ds is not None:
            lines.append(f"{type(ds).__name__}: {len(ds)} samples, {ds.num_classes} classes, {self.checked} checked")
            total = int(self.pixels.sum())
            if total:
                lines.append("class pixel frequencies:")
                for k, name in enumerate(ds.classes):
                    lines.append(f"  {k:3d} {name:<24s} {self.pixels[k] / total:8.4%}  ({int(self.pixels[k])} px)")
                lines.append(
                    f"  {IGNORE_INDEX:3d} {'<ignore>':<24s} {self.pixels[IGNORE_INDEX] / total:8.4%}  "
                    f"({int(self.pixels[IGNORE_INDEX])} px)"
                )
                absent = [ds.classes[k] for k in range(ds.num_classes) if self.pixels[k] == 0]
                if absent:
                    lines.append(f"  classes with no pixels: {', '.join(absent)}")
            if self.sizes:
                lines.append("image sizes (H x W: count):")
                for (h, w), n in self.sizes.most_common():
                    lines.append(f"  {h} x {w}: {n}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def scan(dataset: SegDataset, limit: int | None = None, allow_missing_classes: bool = False) -> Report:
    """Decode every sample of `dataset` (built with strict=False) and collect all problems, those of the labels
    over all masks read included (`seg.data.labels`; `allow_missing_classes` as train.py's flag)."""
    report = Report(dataset, problems=list(dataset.problems))
    labels = LabelStats()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        try:
            image, mask = dataset.load(i)
        except DataError as e:
            report.problems.append(str(e))
            continue
        report.checked += 1
        report.sizes[image.shape[:2]] += 1  # (H, W)
        labels.add(mask, dataset.samples[i][1])
    report.pixels = labels.pixels
    report.problems += label_problems(labels, dataset, allow_missing_classes)
    return report


# -- EXIF orientation -------------------------------------------------------------------------------------
_ORIENTATIONS = {
    2: "shown mirrored left-right",
    3: "shown rotated 180 degrees",
    4: "shown mirrored top-bottom",
    5: "shown transposed (mirrored and rotated)",
    6: "shown rotated 90 degrees clockwise",
    7: "shown transversed (mirrored and rotated)",
    8: "shown rotated 90 degrees counter-clockwise",
}


def exif_orientation_problems(dataset: SegDataset, limit: int | None = None) -> list[str]:
    """One problem per image whose EXIF orientation is not 1 (a phone photo stored sideways).

    seg decodes such an image as it is displayed (`seg.deploy.images`), so its mask must follow the displayed
    layout. The checker can confirm that only through the sizes, which a square image, a mirror or a 180-degree
    turn leave equal: a mask drawn on the stored pixels then passes with most pixels mislabelled. Tools disagree
    on the layout (PIL and torchvision read the stored one), so the fix that settles it for all of them is to bake
    the rotation into the image.
    """
    from seg.deploy.headers import read_header

    problems = []
    for img_path, mask_path in dataset.samples[:limit]:
        try:
            header = read_header(img_path.read_bytes())  # the whole file: a PNG's eXIf may follow its pixels
        except OSError:
            continue  # scan() reports the unreadable file
        if header is None or header.orientation == 1:
            continue
        h, w = header.displayed_size
        problems.append(
            f"{img_path}: EXIF orientation {header.orientation} ({_ORIENTATIONS[header.orientation]}). seg reads it "
            f"as displayed, {h} x {w} (H x W), the way photo viewers and annotation tools show it, so {mask_path} "
            f"must follow that layout: a mask drawn on the stored {header.height} x {header.width} pixels is "
            "mislabelled (silently when the sizes agree). Bake the rotation in so that every tool sees one layout: "
            "`exiftran -ai FILE` (lossless for JPEG) or PIL `ImageOps.exif_transpose(Image.open(FILE)).save(...)`; "
            "then check that the mask matches the upright image."
        )
    return problems


def _label_map(text: str | None) -> dict[int, int] | None:
    """``--label_map "255:1,0:255"`` -> {255: 1, 0: 255}."""
    if not text:
        return None
    try:
        return {int(k): int(v) for k, v in (pair.split(":") for pair in text.split(","))}
    except ValueError:
        raise DataError(f'--label_map {text!r}: expected "stored:class" pairs, e.g. "255:1" or "0:255,255:1"') from None


def _palette(text: str | None) -> list[tuple[int, int, int]] | None:
    if not text:
        return None
    return [tuple(int(v) for v in c.split(",")) for c in text.split(";")]  # type: ignore[misc]


def build(args: argparse.Namespace) -> SegDataset:
    from .ade20k import ADE20KDataset
    from .cityscapes import CityscapesDataset
    from .folder import FolderDataset

    label_map = _label_map(args.label_map)
    if args.reduce_zero_label and args.dataset != "folder":
        raise DataError("--reduce_zero_label is for folder datasets (ADE20K's masks are read that way already)")
    if args.dataset == "folder":
        classes = args.classes.split(",") if args.classes else None
        return FolderDataset(
            args.root,
            args.split,
            classes,
            _palette(args.palette),
            args.ignore_index,
            strict=False,
            ignore_colors=_palette(args.ignore_colors),
            label_map=label_map,
            reduce_zero_label=args.reduce_zero_label,
        )
    if args.dataset == "cityscapes":
        return CityscapesDataset(
            args.root, args.split, label_train_ids=args.label_train_ids, strict=False, label_map=label_map
        )
    return ADE20KDataset(args.root, args.split, strict=False, label_map=label_map)


def _add_label_arguments(p: argparse.ArgumentParser) -> None:
    """The label mapping, as train.py's data.label_map / data.reduce_zero_label / data.allow_missing_classes."""
    p.add_argument(
        "--label_map",
        help='stored mask value -> class index or 255, "255:1" or "0:255,255:1" (as data.label_map: {255: 1})',
    )
    p.add_argument(
        "--reduce_zero_label",
        action="store_true",
        help="folder: masks store 0 for unlabelled and class k as k+1 (as data.reduce_zero_label)",
    )
    p.add_argument(
        "--allow_missing_classes",
        action="store_true",
        help="a class without pixels while ignore covers regions is not a problem (as data.allow_missing_classes)",
    )


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m seg.data.check", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["folder", "cityscapes", "ade20k"], default="folder")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--classes", help="folder: comma-separated class names (default: {root}/classes.json)")
    p.add_argument("--palette", help='folder: colour masks, "r,g,b;r,g,b;..." one per class')
    p.add_argument(
        "--ignore_colors",
        help='folder: colours meaning ignore in colour masks, "r,g,b;r,g,b" (default: "ignore_colors" of classes.json)',
    )
    p.add_argument("--ignore_index", type=int, default=IGNORE_INDEX, help="folder: mask value meaning ignore")
    p.add_argument("--label_train_ids", action="store_true", help="cityscapes: read *_labelTrainIds.png")
    p.add_argument("--limit", type=int, help="check only the first N samples")
    _add_label_arguments(p)
    args = p.parse_args(argv)
    try:
        dataset = build(args)
    except DataError as e:  # the split itself is unusable (missing folder, no class names...)
        print(Report(None, problems=[str(e)]).format())
        return 1
    report = scan(dataset, args.limit, args.allow_missing_classes)
    report.problems += exif_orientation_problems(dataset, args.limit)
    print(report.format())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
