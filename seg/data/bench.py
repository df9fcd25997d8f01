"""Decode + augment throughput of the Cityscapes training recipe, in samples/s per worker.

    python -m seg.data.bench                    # 1 process, 2048x1024 PNG, crop 512x1024
    python -m seg.data.bench --workers 4        # also through a DataLoader with 4 workers

A 2048x1024 image and labelIds mask are synthesised as PNGs in a temporary Cityscapes tree (a smooth scene
plus noise, so the PNG is about as large as a real leftImg8bit file), then `CityscapesDataset` with the
SegDataModule train transform is read repeatedly: PNG decode, label-id mapping and checks, rescale 0.5-2.0,
cat-max crop, flip, photometric distortion, normalise, pad, tensor conversion.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def write_fake_cityscapes(root: Path, n: int = 1, size: tuple[int, int] = (2048, 1024)) -> None:
    """n synthetic 2048x1024 samples in the Cityscapes layout (train split, city 'bench')."""
    w, h = size
    rng = np.random.default_rng(0)
    img_dir, gt_dir = root / 'leftImg8bit/train/bench', root / 'gtFine/train/bench'
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for i in range(n):
        coarse = rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        label_ids = np.array([7, 8, 11, 21, 23, 24, 26, 0], np.uint8)
        labels = label_ids[rng.integers(0, len(label_ids), (h // 128, w // 128))]
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(img_dir / f'bench_{i:06d}_000019_leftImg8bit.png'), img)
        cv2.imwrite(str(gt_dir / f'bench_{i:06d}_000019_gtFine_labelIds.png'), labels)


def main(argv: list[str] | None = None) -> None:
    from .cityscapes import CityscapesDataset
    from .datamodule import collate, seed_worker
    from .transforms import build_train_transform

    p = argparse.ArgumentParser(prog='python -m seg.data.bench', description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=30, help='samples timed per measurement')
    p.add_argument('--workers', type=int, default=0, help='also measure a DataLoader with this many workers')
    p.add_argument('--crop', type=int, nargs=2, default=(512, 1024), metavar=('H', 'W'))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one core per worker, as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_cityscapes(root, n=4)
        png = next((root / 'leftImg8bit').rglob('*.png'))
        transform = build_train_transform(crop_size=tuple(args.crop), base_size=(2048, 1024), seed=0)
        ds = CityscapesDataset(root, 'train', transform=transform)
        raw = CityscapesDataset(root, 'train')
        for i in range(2):  # warm-up
            ds[i % len(ds)]

        t = time.perf_counter()
        for i in range(args.iters):
            raw.load(i % len(raw))
        decode = args.iters / (time.perf_counter() - t)

        t = time.perf_counter()
        for i in range(args.iters):
            ds[i % len(ds)]
        full = args.iters / (time.perf_counter() - t)

        print(f'image: 2048x1024 PNG, {png.stat().st_size / 1e6:.1f} MB; crop {args.crop[0]}x{args.crop[1]}; '
              f'1 thread per worker')
        print(f'decode only (image + mask + label mapping): {decode:6.2f} samples/s per worker')
        print(f'decode + augment (full train recipe):        {full:6.2f} samples/s per worker')
        print(f'workers needed for 90 img/s (R50-D8 on one GPU): {int(np.ceil(90 / full))}')
        if args.workers:
            from torch.utils.data import DataLoader

            dl = DataLoader(ds, batch_size=2, num_workers=args.workers, worker_init_fn=seed_worker,
                            collate_fn=collate, sampler=torch.utils.data.RandomSampler(
                                ds, replacement=True, num_samples=args.iters * args.workers))
            it = iter(dl)
            next(it)
            t, n = time.perf_counter(), 0
            for batch in it:
                n += len(batch['path'])
            print(f'DataLoader with {args.workers} workers: {n / (time.perf_counter() - t):6.2f} samples/s total')


if __name__ == '__main__':
    main()
