"""``mmseg:<name>`` and ``http(s)://`` checkpoints -> a local seg checkpoint: downloaded once, verified, converted
once, cached. :func:`seg.loading.load_model` (and ``read_info``) call :func:`resolve` for these sources, so every
command's ``--ckpt``, ``model.init_from``, ``seg.compare`` and the Python API accept them.

* ``mmseg:<name>``: mmseg's own model name (``python -m seg.zoo list``). Its weights are downloaded into the torch
  hub cache (:mod:`seg.models.download`: SHA-256 prefix checked), converted by ``seg.convert``'s code
  (:func:`seg.convert.convert_mmseg`) with the row's head, backbone, class count, output stride, data set (class
  names, palette, test scale) and mmseg's test mode, and the seg checkpoint is cached beside the download
  (``<file stem>.seg.ckpt``): the next load reads it without touching the network.
* ``http(s)://.../<file>``: a published mmseg file (its file name is in the table, on any mirror) is converted
  the same way; any other URL is a seg checkpoint, downloaded (hash-checked when its name carries one) and read
  as it is.
* ``SEG_ZOO_URL_PREFIX``: a folder URL that replaces download.openmmlab.com's folders (a mirror, an intranet copy;
  the tests point it at a local server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seg.convert import convert_mmseg
from seg.models.download import cached_path, download, locked, mirrored

from .table import find, find_url

__all__ = ["ZOO_PREFIX", "converted_path", "resolve"]

ZOO_PREFIX = "mmseg:"


def converted_path(url: str) -> Path:
    """Where the seg checkpoint converted from the mmseg file at ``url`` is cached."""
    raw = cached_path(url)
    return raw.with_name(f"{raw.stem}.seg.ckpt")


def _convert_command(row: dict[str, Any], raw: Path) -> str:
    return (
        f"python -m seg.convert mmseg {raw} {row['name']}.ckpt --head {row['head']} --backbone {row['backbone']} "
        f"--num_classes {row['num_classes']} --output_stride {row['output_stride']} --dataset {row['dataset']}"
    )


def _from_zoo(row: dict[str, Any], url: str) -> Path:
    out = converted_path(url)
    if out.is_file():
        return out
    with locked(out):  # one process converts; the others then find the file
        if not out.is_file():
            _convert(row, url, out)
    return out


def _convert(row: dict[str, Any], url: str, out: Path) -> None:
    raw = download(
        url,
        hint=f"Or convert the file yourself and pass the result as --ckpt / init_from:\n    {_convert_command(row, cached_path(url))}",
    )
    convert_mmseg(
        raw,
        out,
        head=row["head"],
        backbone=row["backbone"],
        num_classes=row["num_classes"],
        dataset=row["dataset"],
        output_stride=row["output_stride"],
        eval=row["eval"],
        **row.get("build", {}),  # further build_model arguments (none in the published table)
    )


def resolve(source: str) -> Path:
    """The local seg checkpoint for ``mmseg:<name>`` or an ``http(s)://`` URL (see the module docstring).

    Raises:
        seg.zoo.table.UnknownModelError: an ``mmseg:`` name not in the table (with the closest names).
        seg.models.download.DownloadError: offline / failed / cut-short download or a SHA-256 mismatch (with the
            commands that download and convert the file by hand).
    """
    if source.startswith(ZOO_PREFIX):
        row = find(source[len(ZOO_PREFIX) :])
        return _from_zoo(row, mirrored(row["url"]))
    row = find_url(source)
    if row is not None:
        return _from_zoo(row, source)
    return download(source, hint="Then pass the downloaded file: --ckpt /path/to/file (or model.init_from).")
