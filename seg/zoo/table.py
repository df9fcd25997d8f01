"""mmsegmentation's published checkpoints that seg builds exactly: ``table.json`` beside this file.

Generated at development time by ``scripts/make_zoo_table.py`` from mmsegmentation 1.2.2's own ``metafile.yaml``
files and configs (mmseg is never a runtime dependency): every R50/R101-D8 (UPerNet: undilated R50/R101)
ResNetV1c checkpoint of the 14 heads with an mmseg counterpart, on Cityscapes or ADE20K, whose config differs from
the head's base model only in depth, class count and test mode. Excluded, with the reason printed by the script:
the 769x769 Cityscapes models (``align_corners=True``), other backbones (R-18, ResNetV1b, HRNet, multi-grid D16),
other data sets (VOC, Pascal Context, COCO-Stuff ...) and metafile entries whose weights are another schedule's.

A row: ``name`` (mmseg's), ``head`` / ``backbone`` / ``output_stride`` / ``num_classes`` (what seg builds),
``dataset``, ``crop_size`` (H, W) and ``iters`` of the training, ``eval`` (mmseg's test mode), ``url`` (its file
name carries the SHA-256 prefix) and the published ``mIoU`` / ``mIoU_ms_flip`` (mmseg's figures, in %).
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from seg.models.safe_load import CheckpointError

__all__ = ["TABLE", "UnknownModelError", "find", "find_url", "rows"]

TABLE = Path(__file__).with_name("table.json")


class UnknownModelError(CheckpointError):
    """An ``mmseg:<name>`` that is not in the table (the message lists close names)."""


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def rows(head: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """The table's rows, optionally those of one seg head (``'danet'``) and / or data set (``'cityscapes'``)."""
    return [
        dict(r)
        for r in _table()["rows"]
        if (head is None or r["head"] == head) and (dataset is None or r["dataset"] == dataset)
    ]


def find(name: str) -> dict[str, Any]:
    """The row of mmseg model ``name`` (``'danet_r50-d8_4xb2-40k_cityscapes-512x1024'``); an unknown name raises
    :class:`UnknownModelError` with the closest names and the command that lists them all."""
    for row in _table()["rows"]:
        if row["name"] == name:
            return dict(row)
    names = [r["name"] for r in _table()["rows"]]
    close = [n for n in names if name and name in n][:5] or difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    raise UnknownModelError(
        f"mmseg:{name} is not in seg's model zoo table (mmseg's names of the {len(names)} published checkpoints seg "
        "builds exactly). "
        + (f"Close names: {', '.join('mmseg:' + c for c in close)}. " if close else "")
        + "See them all with `python -m seg.zoo list` (--head, --dataset to filter)."
    )


def find_url(url: str) -> dict[str, Any] | None:
    """The row whose weights have the file name of ``url`` (a mirror or a local copy of a published file)."""
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    return next((dict(r) for r in _table()["rows"] if r["url"].rsplit("/", 1)[-1] == name), None)
