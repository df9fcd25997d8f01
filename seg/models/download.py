"""The one downloader of published weights: once into the torch hub cache, verified, resumable, atomic.

* Cache: ``torch.hub.get_dir() / 'checkpoints' / <file name of the URL>`` (``$TORCH_HOME/hub/checkpoints``,
  default ``~/.cache/torch/hub/checkpoints``), the folder torch.hub and timm use: a file found there is not
  downloaded again (a file name without a hash goes one folder deeper, keyed by its URL: :func:`cached_path`).
* Integrity: a file name that carries a hash (``name-<8+ hex digits>.pth``, OpenMMLab's and torch.hub's
  convention) must have a SHA-256 starting with it (torch.hub's ``check_hash``). A mismatch deletes the file and
  says so; nothing unverified is ever loaded.
* Atomic and resumable: bytes go to ``<file>.part``, renamed onto the file when complete and verified; an
  interrupted or cut-short download keeps the ``.part`` and the next call resumes it with an HTTP ``Range``
  request (starting afresh when the server does not support ranges).
* A progress bar on stderr when it is a terminal, nothing in logs.
* Offline or failing: one :class:`DownloadError` naming the URL and the ``curl`` / ``wget`` command that puts the
  file where it is looked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .safe_load import CheckpointError

__all__ = [
    "DownloadError",
    "cache_dir",
    "cached_path",
    "download",
    "file_hash",
    "hash_prefix",
    "manual_commands",
    "mirrored",
]

_HASH_RE = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(CheckpointError):
    """Published weights that could not be downloaded or verified (the message says how to get them by hand)."""


def cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where downloads are kept (set ``TORCH_HOME`` to move it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_name(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise DownloadError(f"{url} does not end in a file name")
    return name


def mirrored(url: str) -> str:
    """``url`` with its folder replaced by ``$SEG_ZOO_URL_PREFIX`` when set (a mirror, or a local server in the
    tests): ``https://download.openmmlab.com/.../x-1234abcd.pth`` -> ``$SEG_ZOO_URL_PREFIX/x-1234abcd.pth``."""
    prefix = os.environ.get("SEG_ZOO_URL_PREFIX")
    return f"{prefix.rstrip('/')}/{file_name(url)}" if prefix else url


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (``resnet50_v1c-2cccc1ad.pth`` -> ``'2cccc1ad'``), or None."""
    m = _HASH_RE.search(name)
    return m.group(1) if m else None


def cached_path(url: str) -> Path:
    """Where :func:`download` keeps the file of ``url``: ``<cache>/<file name>`` for a name with a hash (the same
    file on any mirror), ``<cache>/by-url/<SHA-256 of the URL, 16 digits>/<file name>`` otherwise (two runs'
    ``best.ckpt`` are different files)."""
    name = file_name(url)
    if hash_prefix(name) is not None:
        return cache_dir() / name
    return cache_dir() / "by-url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def file_hash(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def manual_commands(url: str, dst: Path) -> str:
    return f"    curl -L -C - -o {dst} {url}\n    (or: wget -c -O {dst} {url})"


def _verify(path: Path, url: str, expected: str | None, what: str) -> None:
    if expected is None:
        return
    digest = file_hash(path)
    if not digest.startswith(expected):
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"SHA-256 mismatch for {url}: {what} has SHA-256 {digest}, its file name says {expected}...; the file "
            f"is corrupt or not the published one, and {path} was deleted. Run the command again to download it "
            "afresh."
        )


def _progress(total: int | None, initial: int, name: str):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with Lightning
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``<path>.lock`` (POSIX ``flock``; no lock where it is unavailable): DDP ranks or parallel
    jobs that fetch the same file wait for the first one instead of writing the same ``.part`` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def download(url: str, hint: str = "", progress: bool = True) -> Path:
    """The verified local copy of ``url`` in :func:`cache_dir`, downloaded if it is not there yet.

    Args:
        url: ``http(s)://.../<file name>``.
        hint: what to do with the file after a manual download (appended to the offline error).
        progress: show a progress bar (only ever on a terminal).

    Raises:
        DownloadError: unreachable / failing server (with the manual commands), a download cut short (the
            ``.part`` is kept for the next call to resume), or a SHA-256 mismatch (the file is deleted).
    """
    dst = cached_path(url)
    with locked(dst):
        return _download(url, dst, hint, progress)


def _download(url: str, dst: Path, hint: str, progress: bool) -> Path:
    expected = hash_prefix(dst.name)
    if dst.is_file():
        _verify(dst, url, expected, f"the cached file {dst}")
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "seg"}
    if start:
        headers["Range"] = f"bytes={start}-"
    manual = (
        f"Download it by hand (on any machine with internet, then copy it to {dst}):\n{manual_commands(url, dst)}\n"
        f"and run the command again: the file is found in the cache (TORCH_HOME={Path(torch.hub.get_dir()).parent})."
        + (f"\n{hint}" if hint else "")
    )
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # range not satisfiable: start afresh
            part.unlink(missing_ok=True)
            return _download(url, dst, hint, progress)
        raise DownloadError(f"could not download {url}: HTTP {err.code} {err.reason}.\n{manual}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"could not download {url} ({reason}); this machine may be offline.\n{manual}") from None
    with response:
        resumed = start > 0 and response.status == 206
        done = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        bar = _progress(total, done, dst.name) if progress else None
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(
                f"the download of {url} broke off after {done} bytes ({err}); {part} is kept and the next run "
                f"resumes it.\n{manual}"
            ) from None
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done < total:
        raise DownloadError(
            f"the download of {url} was cut short: {done} of {total} bytes; {part} is kept and the next run "
            f"resumes it.\n{manual}"
        )
    _verify(part, url, expected, "the download")
    os.replace(part, dst)
    return dst
