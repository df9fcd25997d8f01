"""``python -m seg.zoo``: mmsegmentation's published checkpoints that seg builds exactly.

    python -m seg.zoo list [--head danet] [--dataset cityscapes]   # the table, with mmseg's published mIoU
    python -m seg.zoo fetch danet_r50-d8_4xb2-40k_cityscapes-512x1024  # download + convert now; prints the file

Any command takes ``mmseg:<name>`` where it takes a checkpoint (``--ckpt``, ``model.init_from``, ``seg.load``).
"""

from __future__ import annotations

import argparse
import sys

from seg.models import get_head

from .table import TABLE, rows


def _miou(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(head: str | None, dataset: str | None) -> int:
    selected = rows(head, dataset)
    header = ("mmseg:<name>", "head", "backbone", "OS", "dataset", "crop (H, W)", "iters", "mIoU", "ms+flip")
    lines = [
        (
            r["name"],
            r["head"],
            r["backbone"],
            str(r["output_stride"]),
            r["dataset"],
            f"{r['crop_size'][0]}x{r['crop_size'][1]}",
            f"{r['iters'] // 1000}k",
            _miou(r["mIoU"]),
            _miou(r["mIoU_ms_flip"]),
        )
        for r in selected
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, *lines]:
        print("  ".join(v.ljust(w) if i < 5 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    print(
        f"\n{len(selected)} checkpoints; mIoU: mmseg's published figures (%, val set, single scale / multi-scale + "
        f"flip), not re-measured by seg. Use one as --ckpt mmseg:<name> or --model.init_from=mmseg:<name>. "
        f"(table: {TABLE.name}, from mmsegmentation 1.2.2's metafiles)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the published checkpoints seg builds, with mmseg's mIoU")
    ls.add_argument("--head", default=None, help="a seg head name (danet, ccnet, aspp, sep_aspp, uper ...)")
    ls.add_argument("--dataset", default=None, choices=["cityscapes", "ade20k"])
    fetch = sub.add_parser("fetch", help="download and convert one now (as any command would); print its path")
    fetch.add_argument("name", help="mmseg's model name, with or without the mmseg: prefix")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            if args.head is not None:
                get_head(args.head)  # an unknown head: the valid names
            return print_table(args.head, args.dataset)
        from .hub import ZOO_PREFIX, resolve

        print(resolve(args.name if args.name.startswith(ZOO_PREFIX) else ZOO_PREFIX + args.name))
        return 0
    except ValueError as err:  # unknown head / model name, DownloadError (a CheckpointError): the message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
