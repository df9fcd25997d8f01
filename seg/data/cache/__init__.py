"""A one-time cache of decoded images and masks, so training stops paying for PNG decoding every epoch.

PNG decoding is most of a training sample's CPU cost (~26 ms for a 2048x1024 Cityscapes frame with libpng,
~20 ms with libspng, vs ~6 ms for the whole augmentation). The cache keeps each decoded file as its raw pixels
(lossless by construction; masks exactly as stored, before the label mapping, which still runs and checks
every sample), so reading one costs a file read:

    python -m seg.data.cache --dataset cityscapes --root /datasets/cityscapes --cache_dir /fast/seg_cache
    python train.py ... --data.cache_dir /fast/seg_cache      # or fill it lazily during the first epoch

(the command is `seg/data/cache/__main__.py`).

Images are stored uncompressed (natural images barely compress losslessly, and inflating would cost what
decoding does): 6.3 MB per 2048x1024 frame, ~22 GB for Cityscapes train+val; masks compress ~100x with zlib
level 1 (~0.7 ms to inflate) and are stored that way.

An entry is keyed by the source file's content, not only by its name: absolute path, size, modification time
and the CRC-32 of its bytes. Size and time alone served stale pixels after ``cp -p`` of a same-size file (the
time is preserved); reading and checksumming the sources costs ~0.7 ms for a Cityscapes pair (the 2.2 MB PNG
is a third of its pixels' size), a fraction of the ~40 ms decode it saves (``python -m seg.data.bench`` prints
it). A different file of the same size and time passes for the old one only if its CRC-32 also matches (1 in
2^32).

Every entry ends with the CRC-32 of all its bytes (header and payload), checked on every read (~0.9 ms for a
6.3 MB image entry with ISA-L, ~3 ms with zlib): a flipped bit on disk used to be served as pixels. A damaged entry is reported once (a warning
naming it), decoded afresh from the source and rewritten. Entries are written atomically (temp file + rename),
so concurrent DataLoader workers and DDP ranks can share one folder. Reading an entry never runs code: a short
JSON header (dtype, shape, compression), the raw bytes and the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ..png import crc32, inflate

_MAGIC = b"SEGCACHE2\n"  # 2: a CRC-32 trailer (entries of format 1 had none; their keys differ too)
_DTYPE_KINDS = "biuf"  # plain numbers only: an entry can never describe an object array
_COMPRESS_MIN_RATIO = 4  # store zlib'ed only when it shrinks the entry this much (masks, flat images)


class FileCache:
    """Decoded arrays of source files, one entry file each, under `root`.

    Args:
        root: cache folder (created if absent; must be writable). Put it on a fast local disk.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(
                f"{self.root}: cannot use it as the decode cache ({e}); "
                "pass a writable cache_dir, or none to decode every time"
            ) from e
        self._write_failed = False
        self._warned: set[Path] = set()  # damaged entries already reported (once each)

    def __repr__(self) -> str:
        return f"FileCache({str(self.root)!r})"

    def entry(self, path: Path) -> Path:
        """Entry file of a source file, from its path, size, time and content (raises OSError when the source
        cannot be read)."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            content = crc32(f.read())
        key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{content:08x}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.bin"

    def get(self, path: str | Path, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        """`decode(path)`, read from the cache when present, else decoded and stored."""
        path = Path(path)
        try:
            entry = self.entry(path)
        except OSError:
            return decode(path)  # missing source: decode raises its usual, clear error
        try:
            return read_entry(entry)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, zlib.error) as e:  # damaged entry (disk error, foreign file): decode afresh
            if entry not in self._warned:
                self._warned.add(entry)
                warnings.warn(
                    f"{entry}: damaged cache entry for {path} ({e}); decoding the source again and rewriting the "
                    "entry (if this repeats, check the disk holding the cache)",
                    stacklevel=2,
                )
        array = decode(path)
        self._store(entry, array)
        return array

    def _store(self, entry: Path, array: np.ndarray) -> None:
        try:
            write_entry(entry, array)
        except OSError as e:  # e.g. disk full: training goes on, decoding from the source
            if not self._write_failed:
                warnings.warn(f"{self.root}: cannot write cache entries ({e}); decoding without caching", stacklevel=2)
            self._write_failed = True


def write_entry(entry: Path, array: np.ndarray) -> None:
    """Write one entry atomically: header line, raw (or zlib level 1) C-order bytes, then the CRC-32 of all that
    (4 bytes, big-endian)."""
    array = np.ascontiguousarray(array)
    payload = array.tobytes()
    packed = zlib.compress(payload, 1)
    compressed = len(packed) * _COMPRESS_MIN_RATIO <= len(payload)
    header = _MAGIC + json.dumps({"dtype": array.dtype.str, "shape": list(array.shape), "zlib": compressed}).encode()
    body = packed if compressed else payload
    check = crc32(body, crc32(header + b"\n"))
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(header + b"\n")
            f.write(body)
            f.write(check.to_bytes(4, "big"))
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_entry(entry: Path) -> np.ndarray:
    """Array of one entry (writable, no copy for uncompressed entries). Raises ValueError if malformed or damaged
    (its CRC-32 does not match)."""
    with open(entry, "rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)
    end = buf.find(b"\n", len(_MAGIC), len(_MAGIC) + 4096)
    if not buf.startswith(_MAGIC) or end < 0:
        raise ValueError("not a seg cache entry (or one written by an older seg)")
    body = memoryview(buf)[:-4]
    if crc32(body) != int.from_bytes(buf[-4:], "big"):
        raise ValueError("checksum mismatch: the entry's bytes changed on disk")
    header = json.loads(bytes(buf[len(_MAGIC) : end]))
    dtype, shape = np.dtype(header["dtype"]), tuple(int(n) for n in header["shape"])
    if dtype.kind not in _DTYPE_KINDS or any(n < 0 for n in shape):
        raise ValueError(f"unsupported entry {header}")
    if header["zlib"]:
        data: bytes | bytearray = bytearray(inflate(body[end + 1 :]))
        offset, size = 0, len(data)
    else:
        data, offset, size = buf, end + 1, len(body)
    count = int(np.prod(shape, dtype=np.int64))
    if size - offset != count * dtype.itemsize:
        raise ValueError(f"truncated entry: {size - offset} bytes for {header}")
    return np.frombuffer(data, dtype, count, offset).reshape(shape)


def cache_size(root: str | Path) -> int:
    """Bytes held by the entries under `root`."""
    return sum(p.stat().st_size for p in Path(root).glob("*/*.bin"))
