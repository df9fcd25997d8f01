"""One training run per run folder: ``<run_dir>/.lock``.

Why: two ``train.py`` processes with the same ``trainer.default_root_dir`` (a command started twice, two SLURM
jobs, a resume while the run still runs) both finish with exit 0 and leave ``config.yaml`` from one and
checkpoints from the other. :class:`RunLock` creates ``.lock`` with ``O_CREAT | O_EXCL`` (atomic: of two processes
exactly one creates it), writes the holder's PID, host, start time and command into it, and removes it when the
run ends (at the end of ``train.py``, and at interpreter exit for any other use). A second run refuses with
:class:`RunDirBusy` naming the holder. A lock left by a process that no longer runs on this host (``kill -9``, an
out-of-memory kill, a reboot) is taken over with a note; one from another host cannot be checked, so the message
says how to remove it. Under DDP only global rank 0 takes the lock: the ranks share the folder.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.utilities import rank_zero_info

from seg.io import pid_alive

__all__ = ["RunDirBusy", "RunLock", "release_all"]

_HELD: dict[Path, "RunLock"] = {}  # the locks this process holds, released by release_all() / at exit


class RunDirBusy(RuntimeError):
    """Another training run holds the run folder."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux ``/proc``), which tells a reused PID from the
    lock's holder; None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _holder_alive(info: dict[str, Any]) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    started = _start_time(pid)
    return started is None or info.get("proc_start") in (None, started)


class RunLock:
    """``<run_dir>/.lock`` held by this process (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"

    def _write_new(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join([sys.executable, *sys.argv]),
        }
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info) + "\n")

    def _read(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirBusy`; a lock of this same process (the run folder used again from
        Python) is kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # a holder may be writing its lock, or another process taking over a stale one
            try:
                self._write_new()
                break
            except FileExistsError:
                pass
            info = self._read()
            here = info.get("host") == socket.gethostname()
            if here and info.get("pid") == os.getpid():
                break
            if not info and self._age() < 5:  # created, not yet written: its holder is writing it
                time.sleep(0.1)
                continue
            if info and not (here and not _holder_alive(info)):
                raise RunDirBusy(self._busy_message(info, here))
            if self._read() == info:  # stale, and not replaced meanwhile by a process that took it over
                self.path.unlink(missing_ok=True)
                who = f"PID {info['pid']} on this host" if info else "a process killed while writing it"
                rank_zero_info(f"note: {self.path} was left by {who}, which is no longer running: taken over")
        else:
            raise RunDirBusy(self._busy_message(self._read(), True))
        _HELD[self.path] = self

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _busy_message(self, info: dict[str, Any], here: bool) -> str:
        run_dir = self.path.parent
        holder = f"PID {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        stale = (
            f"if that process has ended, delete {self.path}"
            if not here
            else "wait for it to finish (or stop it: it saves last.ckpt, then --ckpt_path last continues it)"
        )
        return (
            f"{run_dir} is in use by another training run ({holder}: {info.get('command')}), says {self.path}. "
            f"Train into another folder (--trainer.default_root_dir), or {stale}"
        )

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        _HELD.pop(self.path, None)
        info = self._read()
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


def release_all() -> None:
    """Release every run lock this process holds (end of ``train.py``, interpreter exit)."""
    for lock in list(_HELD.values()):
        lock.release()


atexit.register(release_all)
