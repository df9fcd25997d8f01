"""Decode + augment throughput of the Cityscapes training recipe, in samples/s per worker (one core).

    python -m seg.data.bench                    # 1 process, 1024x2048 (H x W) PNG, crop 512x1024
    python -m seg.data.bench --workers 4        # also through a DataLoader with 4 workers

A 1024x2048 image and labelIds mask are synthesised as PNGs in a temporary Cityscapes tree (`fake_scene`: its
PNG is ~2.2 MB, like a real leftImg8bit frame), then `CityscapesDataset` with the SegDataModule train
transform is read repeatedly: decode (PNG, or the `seg.data.cache` decode cache), label-id mapping and checks,
rescale 0.5-2.0 + cat-max crop, flip, photometric distortion, normalise, pad, tensor conversion. Rates are
given per wall second and per CPU second of the process (the latter barely moves on a busy machine).

"decode PNG pair" decodes whole files; "decode PNG + augment" is what training does: with the `fast` extra the
crop decodes the PNGs only down to the rows it keeps (`seg.data.png.PngRows`), so it can cost less than the sum
of the two rows above it. The cache's two "of which" rows time what makes a cache read safe, both part of
"decode from cache": reading the source files to key the entry on their content (a replaced file of the same size
and time is not served stale), and checking each entry's CRC-32 (a damaged entry is not served); the second row
re-reads the entry files, so it counts their read too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from seg.command_line import ArgParser


def fake_scene(seed: int = 0, size: tuple[int, int] = (1024, 2048)) -> tuple[np.ndarray, np.ndarray]:
    """A street-scene stand-in of `size` (H, W): (HxWx3 uint8 RGB image, HxW uint8 Cityscapes label ids).

    Class blocks of 128 px with one colour each, smooth shading and mild blurred texture: its PNG is ~2.2 MB at
    1024x2048, like a real ``leftImg8bit`` frame (pure noise would be ~6 MB and decode slower than real data).
    """
    h, w = size
    rng = np.random.default_rng(seed)
    label_ids = np.array([7, 8, 11, 21, 23, 24, 26, 0], np.uint8)
    labels = cv2.resize(
        label_ids[rng.integers(0, len(label_ids), (max(h // 128, 1), max(w // 128, 1)))],
        (w, h),
        interpolation=cv2.INTER_NEAREST,
    )
    colours = rng.integers(30, 226, (256, 3)).astype(np.float32)
    shade = cv2.resize(
        rng.normal(0, 25, (max(h // 32, 1), max(w // 32, 1), 3)).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    img = cv2.GaussianBlur(colours[labels] + shade + rng.normal(0, 4, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def write_fake_cityscapes(
    root: Path, n: int = 1, size: tuple[int, int] = (1024, 2048), encoder: str = "opencv"
) -> None:
    """n `fake_scene` samples of `size` (H, W) in the Cityscapes layout (train split, city 'bench'): image, labelIds and
    labelTrainIds PNGs, written by OpenCV (libpng, every row Sub-filtered) or PIL (`encoder='pil'`: adaptive
    per-row filters, mostly Paeth for photos, as e.g. cityscapesScripts writes its label images). The row
    filters decide how fast a PNG decodes (Paeth rows are the slowest), for every decoder alike."""
    from PIL import Image

    from .cityscapes import label_id_lut

    if encoder not in ("opencv", "pil"):
        raise ValueError(f"encoder must be 'opencv' or 'pil', got {encoder!r}")
    to_train = np.maximum(label_id_lut(), 0).astype(np.uint8)
    img_dir, gt_dir = root / "leftImg8bit/train/bench", root / "gtFine/train/bench"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for i in range(n):
        img, labels = fake_scene(i, size)
        files = {
            img_dir / f"bench_{i:06d}_000019_leftImg8bit.png": img,
            gt_dir / f"bench_{i:06d}_000019_gtFine_labelIds.png": labels,
            gt_dir / f"bench_{i:06d}_000019_gtFine_labelTrainIds.png": to_train[labels],
        }
        for path, array in files.items():
            if encoder == "pil":
                Image.fromarray(array).save(path)
            else:
                cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array)


def _rate(f: Callable[[int], object], iters: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of f(0..iters-1)."""
    t, c = time.perf_counter(), time.process_time()
    for i in range(iters):
        f(i)
    return iters / (time.perf_counter() - t), iters / max(time.process_time() - c, 1e-9)


def main(argv: list[str] | None = None) -> None:
    from .transforms import CITYSCAPES_CROP

    p = ArgParser(prog="python -m seg.data.bench", description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=30, help="samples timed per measurement")
    p.add_argument("--workers", type=int, default=0, help="also measure a DataLoader with this many workers")
    p.add_argument("--batch_size", type=int, default=8, help="DataLoader batch size")
    p.add_argument("--crop", type=int, nargs=2, default=CITYSCAPES_CROP, metavar=("H", "W"))
    p.add_argument(
        "--encoder",
        choices=("opencv", "pil"),
        default="opencv",
        help="who writes the synthetic PNGs (their row filters set the decode speed; see write_fake_cityscapes)",
    )
    args = p.parse_args(argv)
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one core per worker, as in a DataLoader worker
    try:
        _measure(args)
    finally:  # a caller's process (a test, a notebook) keeps its own thread counts
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def _measure(args: argparse.Namespace) -> None:
    from . import png as png_decoder
    from .cityscapes import CityscapesDataset
    from .datamodule import collate, seed_worker
    from .transforms import CITYSCAPES_SCALE, build_train_transform

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        write_fake_cityscapes(root, n=4, encoder=args.encoder)
        png = next((root / "leftImg8bit").rglob("*.png"))
        transform = build_train_transform(crop_size=tuple(args.crop), scale=CITYSCAPES_SCALE, seed=0)
        ds = CityscapesDataset(root, "train", transform=transform)
        cached = CityscapesDataset(root, "train", transform=transform)
        cached.set_cache(Path(tmp) / "cache")
        raw, raw_cached = CityscapesDataset(root, "train"), CityscapesDataset(root, "train")
        raw_cached.set_cache(Path(tmp) / "cache")
        loaded = [raw.load(i) for i in range(len(raw))]
        for i in range(len(ds)):  # warm-up, and fills the cache
            ds[i], cached[i]
        n = len(ds)

        def augment(i: int) -> object:
            image, mask = loaded[i % n]
            return transform(image=image, mask=mask)

        cache = raw_cached.cache
        entries = [[cache.entry(p) for p in pair] for pair in raw_cached.samples]
        rows = [
            ("decode PNG pair, whole (+ label mapping)", lambda i: raw.load(i % n)),
            ("decode from cache (+ label mapping)", lambda i: raw_cached.load(i % n)),
            ("  of which: cache key (read + CRC-32)", lambda i: [cache.entry(p) for p in raw_cached.samples[i % n]]),
            ("  of which: entry CRC-32 check", lambda i: [png_decoder.crc32(e.read_bytes()) for e in entries[i % n]]),
            ("augment only (recipe, to tensors)", augment),
            ("decode PNG + augment (training)", lambda i: ds[i % n]),
            ("decode cache + augment", lambda i: cached[i % n]),
        ]
        decoder = png_decoder.backend()
        print(
            f"image: 1024x2048 (H x W) PNG written by {args.encoder}, {png.stat().st_size / 1e6:.1f} MB, decoded by "
            f"{decoder}; crop {args.crop[0]}x{args.crop[1]} (H x W); 1 thread; cache checksums: CRC-32 by "
            f"{'ISA-L' if png_decoder._isal is not None else 'zlib'}"
        )
        print(f"{'samples/s per worker':40s} {'wall':>8s} {'CPU':>8s}   ms/sample (CPU)")
        full = {}
        for name, f in rows:
            wall, cpu = _rate(f, args.iters)
            full[name] = cpu  # a worker's capacity on an idle core
            print(f"{name:40s} {wall:8.2f} {cpu:8.2f}   {1e3 / cpu:6.1f}")
        for name in ("decode PNG + augment (training)", "decode cache + augment"):
            print(
                f"workers for 90 img/s (R50-D8 on one GPU), {name}: {int(np.ceil(90 / full[name]))} "
                "(+1-2 for headroom; from the CPU rate: one idle core per worker)"
            )
        if args.workers:
            from torch.utils.data import DataLoader, RandomSampler

            for name, data in (("PNG", ds), ("cache", cached)):
                num = max(args.iters, 4 * args.batch_size) * args.workers
                dl = DataLoader(
                    data,
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    worker_init_fn=seed_worker,
                    collate_fn=collate,
                    persistent_workers=True,
                    prefetch_factor=4,
                    pin_memory=torch.cuda.is_available(),
                    sampler=RandomSampler(data, replacement=True, num_samples=num),
                )
                it = iter(dl)
                next(it)  # workers started
                t, count = time.perf_counter(), 0
                for batch in it:
                    count += len(batch["path"])
                print(
                    f"DataLoader, {args.workers} workers, batch {args.batch_size}, {name}: "
                    f"{count / (time.perf_counter() - t):7.2f} samples/s total",
                    flush=True,
                )


if __name__ == "__main__":
    main()
