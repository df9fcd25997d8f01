"""Side by side, one core: mmseg 1.2.2's Cityscapes train pipeline vs seg's, on the same 2048x1024 PNG pair.

Runs only in the mmseg reference venv (never in CI), with seg importable::

    PYTHONPATH=. taskset -c 0 /work/mmenv/bin/python scripts/data_pipeline_vs_mmseg.py --rounds 7

mmseg (configs/_base_/datasets/cityscapes.py): LoadImageFromFile, LoadAnnotations (labelTrainIds PNG),
RandomResize(scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True), RandomCrop((512, 1024),
cat_max_ratio=0.75), RandomFlip(0.5), PhotoMetricDistortion, PackSegInputs. mmseg normalises later, on the GPU
(SegDataPreProcessor); seg's samples are already normalised float32 tensors, so seg does strictly more here.

seg: `CityscapesDataset` + `build_train_transform` on the same files, read three ways: the labelTrainIds PNG
(same input as mmseg), the labelIds PNG (seg's default: ids mapped and checked on the fly), and through the
decoded-file cache (`seg.data.cache`, filled once before timing). Rounds alternate between the pipelines so
machine drift hits all of them alike; every round reports samples/s, and the summary gives min/median/max per
pipeline and the median of the per-round ratios to mmseg.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch


def stub_mmcv_ops() -> None:
    """mmcv-lite has no compiled ops; mmseg.utils imports one at module level. Placeholders suffice here
    (no transform of the recipe uses them)."""
    import types

    import mmcv

    class _Missing:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("compiled mmcv op not available (mmcv-lite)")

    def missing(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing

    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = []
    ops.__getattr__ = missing
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops


def mmseg_pipeline(root: Path) -> Callable[[int], object]:
    stub_mmcv_ops()
    import mmseg.datasets  # noqa: F401  (registers the transforms)
    from mmengine.dataset import Compose
    from mmseg.utils import register_all_modules

    register_all_modules()
    pipeline = Compose(
        [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations"),
            dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type="RandomCrop", crop_size=(512, 1024), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs"),
        ]
    )
    images = sorted((root / "leftImg8bit/train").rglob("*_leftImg8bit.png"))
    pairs = [
        (
            str(p),
            str(
                root / "gtFine/train" / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            ),
        )
        for p in images
    ]

    def sample(i: int) -> object:
        img, seg = pairs[i % len(pairs)]
        out = pipeline(dict(img_path=img, seg_map_path=seg, reduce_zero_label=False, seg_fields=[]))
        assert out["inputs"].shape == (3, 512, 1024), out["inputs"].shape
        return out

    return sample


def seg_pipeline(root: Path, label_train_ids: bool, cache_dir: Path | None = None) -> Callable[[int], object]:
    from seg.data.cityscapes import CityscapesDataset
    from seg.data.transforms import build_train_transform

    ds = CityscapesDataset(
        root,
        "train",
        label_train_ids=label_train_ids,
        transform=build_train_transform((512, 1024), (1024, 2048), seed=0),
    )
    ds.set_cache(cache_dir)

    def sample(i: int) -> object:
        out = ds[i % len(ds)]
        assert out["image"].shape == (3, 512, 1024), out["image"].shape
        return out

    if cache_dir is not None:
        for i in range(len(ds)):  # fill the cache once (what `python -m seg.data.cache` does)
            ds.load(i)
    return sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="samples per pipeline per round")
    p.add_argument("--encoder", choices=("opencv", "pil"), default="opencv", help="who writes the PNGs")
    args = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    np.random.seed(0)  # mmseg's transforms draw from numpy's global generator

    from seg.data.bench import write_fake_cityscapes

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_cityscapes(root, n=4, encoder=args.encoder)
        png = next((root / "leftImg8bit").rglob("*.png"))
        print(f"2048x1024 image PNG {png.stat().st_size / 1e6:.2f} MB, 4 samples, crop 512x1024, 1 thread")
        pipelines = {
            "mmseg 1.2.2": mmseg_pipeline(root),
            "seg (labelTrainIds PNG)": seg_pipeline(root, True),
            "seg (labelIds PNG, default)": seg_pipeline(root, False),
        }
        pipelines["seg (decode cache)"] = seg_pipeline(root, False, root / "cache")
        rates: dict[str, list[float]] = {k: [] for k in pipelines}  # samples per wall second
        cpu_rates: dict[str, list[float]] = {k: [] for k in pipelines}  # samples per CPU second of this process
        for f in pipelines.values():  # warm-up
            for i in range(3):
                f(i)
        for r in range(args.rounds):
            line = []
            for name, f in pipelines.items():
                t, c = time.perf_counter(), time.process_time()
                for i in range(args.iters):
                    f(i)
                rates[name].append(args.iters / (time.perf_counter() - t))
                cpu_rates[name].append(args.iters / (time.process_time() - c))
                line.append(f"{name} {rates[name][-1]:6.2f} ({cpu_rates[name][-1]:6.2f})")
            print(f"round {r} (wall (cpu) samples/s): " + " | ".join(line), flush=True)
        for title, table in (("wall clock", rates), ("CPU time (less sensitive to a loaded machine)", cpu_rates)):
            base = table["mmseg 1.2.2"]
            print(f"\nsamples/s per core, {title}: min / median / max   (median of per-round ratios to mmseg)")
            for name, v in table.items():
                ratio = statistics.median(a / b for a, b in zip(v, base))
                print(f"  {name:30s} {min(v):6.2f} / {statistics.median(v):6.2f} / {max(v):6.2f}   ({ratio:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
