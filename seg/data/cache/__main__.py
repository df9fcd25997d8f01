"""Fill the decode cache (`seg.data.cache`) of a dataset's splits ahead of training, on all cores.

python -m seg.data.cache --dataset cityscapes --root /datasets/cityscapes --cache_dir /fast/seg_cache
"""

from __future__ import annotations

import os
import time

from torch.utils.data import DataLoader, Dataset

from seg.command_line import ArgParser

from ..base import SegDataset
from ..datamodule import DEFAULT_SCALES, SegDataModule
from . import cache_size


class _Fill(Dataset):
    """Decodes (and checks) both files of a sample, which stores them in the cache; yields the index only."""

    def __init__(self, ds: SegDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> int:
        self.ds.load(i)
        return i


def main(argv: list[str] | None = None) -> None:
    p = ArgParser(prog="python -m seg.data.cache", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(DEFAULT_SCALES), default="folder")
    p.add_argument("--root", required=True, help="dataset root (as data.root)")
    p.add_argument("--cache_dir", required=True, help="cache folder (as data.cache_dir)")
    p.add_argument("--split", nargs="+", default=["train", "val"], help="splits to fill (default: train val)")
    p.add_argument("--label_train_ids", action="store_true", help="cityscapes: *_labelTrainIds.png masks")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    args = p.parse_args(argv)

    for split in args.split:
        dm = SegDataModule(
            args.dataset,
            args.root,
            train_split=split,
            label_train_ids=args.label_train_ids,
            num_workers=0,
            cache_dir=args.cache_dir,
        )
        ds = dm.dataset("train")
        t = time.perf_counter()
        for _ in DataLoader(_Fill(ds), batch_size=None, num_workers=args.workers):
            pass
        print(f"{split}: {len(ds)} samples cached in {time.perf_counter() - t:.1f} s", flush=True)
    print(f"{args.cache_dir}: {cache_size(args.cache_dir) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
