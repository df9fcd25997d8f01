"""Files that are always whole: atomic writes (checkpoints, ``summary.json``, ``metrics.json``, reports) and JSON
that stays valid JSON.

Why atomic: ``<dir>/.<name>.tmp<pid>`` is written, fsynced and ``os.replace``-d onto the target, then the folder
is fsynced, so the target is always either the previous or the new complete file, also after a power cut or a
kill mid-write. Temp files of killed processes are removed by :func:`remove_stale_temp_files`.

Why :func:`write_json`: ``json.dumps`` writes ``NaN`` / ``Infinity`` for non-finite floats, which is not JSON
(``jq``, JavaScript and most readers reject the file). A metric that does not exist (the IoU of a class that is
in neither the ground truth nor the prediction) is written as ``null``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "json_safe", "pid_alive", "remove_stale_temp_files", "write_json"]

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def _no_space(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename itself durable (not supported on every OS / filesystem)
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on ``<dir>/.<name>.tmp<pid>``, fsync it, rename it onto ``path``, fsync the folder.

    On any failure the temp file is removed and ``path`` is untouched; a full disk raises one ``OSError``
    (ENOSPC) naming the file and the free space, instead of the writer's own message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and _no_space(err):
            free = shutil.disk_usage(path.parent).free
            raise OSError(
                errno.ENOSPC,
                f"cannot write {path}: no space left on device ({free / 2**20:.0f} MiB free "
                f"in {path.parent}). Free some space or write to another disk (for training: "
                "--checkpoint.dirpath); the previous file, if any, is intact",
            ) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file through :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Inf) replaced by ``None``, containers copied."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, valid JSON (non-finite floats as ``null``), atomically."""
    return atomic_write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n", path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete ``.<name>.tmp<pid>`` files of :func:`atomic_write` whose process is gone (killed mid-save)."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and pid_alive(pid):
            continue  # another live process may be writing it
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
