"""Fast, exact decoding of 8-bit PNGs with the optional `fast` extra (``pip install "seg[fast]"``).

A PNG is a zlib stream of filtered rows. Decoding a 2048x1024 Cityscapes frame with libpng or libspng spends
~19 of its ~20 ms in zlib's inflate. With both extras installed:

1. the IDAT stream is inflated by ISA-L (`isal`, SIMD inflate, ~2.5x zlib), its Adler-32 and every chunk's
   CRC checked as zlib/libspng would;
2. the inflated (still filtered) rows are re-wrapped as an uncompressed ("stored") zlib stream in a minimal
   PNG, which libspng (`pyspng`) unfilters in C at memcpy speed.

The pixels are exactly libspng's / libpng's (tests compare against PIL on every filter type). A palette PNG's
unfiltered bytes are its indices, so it is re-wrapped as greyscale to read them. Only libspng present: plain
libspng. Anything unusual (interlaced, 16-bit, grey+alpha, malformed, an image with an EXIF orientation) returns
None and the caller falls back to OpenCV / PIL, which decode it or report the file.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from seg.deploy.headers import read_header

try:  # optional: libspng, ~1.25x OpenCV's libpng on its own
    import pyspng as _spng
except ImportError:  # pragma: no cover - depends on the environment
    _spng = None
try:  # optional: ISA-L inflate, ~2.5x zlib's
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the environment
    _isal = None

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 6: 4}  # colour type -> samples per pixel (8-bit)
_STORED_BLOCK = 65535


class DecodeError(ValueError):
    """`PngRows.rows` met damaged data (decode the file the usual way to have it reported)."""


def inflate(data: bytes | memoryview) -> bytes:
    """``zlib.decompress``, by ISA-L (~2.5x faster) when the `fast` extra is installed; raises ``zlib.error``."""
    if _isal is None:
        return zlib.decompress(data)
    try:
        return _isal.decompress(data)
    except _isal.error as e:
        raise zlib.error(str(e)) from e


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """``zlib.crc32``, by ISA-L (SIMD, ~3-4x faster: ~7 GB/s vs ~2 on the dev VM) when the `fast` extra is
    installed: the same CRC-32, so files written with one are read with the other."""
    return _isal.crc32(data, value) if _isal is not None else zlib.crc32(data, value)


def backend() -> str:
    """Which decoder `decode` uses for 8-bit PNGs, for reports."""
    if _spng is None:
        return "OpenCV / PIL (libpng)"
    return "ISA-L inflate + libspng" if _isal is not None else "libspng (pyspng)"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _isal.crc32(kind + data))


def _stored_png(raw: bytes | memoryview, width: int, rows: int, colour: int) -> bytes:
    """A PNG of `rows` filtered scanlines `raw`, stored uncompressed (deflate "stored" blocks): one copy of
    `raw`, its checksums from ISA-L's SIMD CRC-32 / Adler-32 (~10x zlib's)."""
    view = memoryview(raw)
    zlib_stream = [b"\x78\x01"]
    for start in range(0, len(raw), _STORED_BLOCK):
        block = view[start : start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(raw)
        zlib_stream += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    zlib_stream.append(struct.pack(">I", _isal.adler32(view)))
    length = sum(len(part) for part in zlib_stream)
    crc = _isal.crc32(b"IDAT")
    for part in zlib_stream:
        crc = _isal.crc32(part, crc)
    header = struct.pack(">IIBBBBB", width, rows, 8, colour, 0, 0, 0)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            struct.pack(">I", length),
            b"IDAT",
            *zlib_stream,
            struct.pack(">I", crc),
            _chunk(b"IEND", b""),
        ]
    )


def _header(data: bytes, mode: str) -> tuple[int, int, int] | None:
    """(width, height, colour type) of an 8-bit non-interlaced PNG this module decodes in `mode`, else None."""
    if _spng is None or len(data) < 33 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    kinds = (2, 6) if mode == "RGB" else (0, 2, 3, 6)
    if depth != 8 or interlace or colour not in kinds or not width or not height:
        return None
    oriented = read_header(data) if mode == "RGB" else None  # masks are read as stored
    if oriented is not None and oriented.orientation != 1:
        return None  # an eXIf orientation: `seg.deploy.images.decode_image` applies it
    return width, height, colour


def _idat(data: bytes) -> list[memoryview] | None:
    """The IDAT chunks' data, every IHDR/IDAT CRC checked; None if the file is malformed."""
    view, idat, pos, end = memoryview(data), [], 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body_end = data[pos + 4 : pos + 8], pos + 8 + length
        if body_end + 4 > end:
            return None
        if kind == b"IDAT" or kind == b"IHDR":
            if _isal.crc32(view[pos + 4 : body_end]) != int.from_bytes(data[body_end : body_end + 4], "big"):
                return None
            if kind == b"IDAT":
                idat.append(view[pos + 8 : body_end])
        elif kind == b"IEND":
            break
        pos = body_end + 4
    return idat or None


def _spng_load(data: bytes, width: int, rows: int, colour: int) -> np.ndarray:
    """libspng's pixels of a PNG: HxWx3 RGB for colour types 2/6, HxW values for grey (and re-wrapped palette)
    files. Raises ValueError if libspng returns anything else."""
    rgb = colour in (2, 6)
    out = _spng.load(data, format="RGB" if rgb else "L")
    shape = (rows, width, 3) if rgb else (rows, width)
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"libspng returned {out.shape} {out.dtype}, expected {shape} uint8")
    return out


def _unfilter(raw: bytes | memoryview, width: int, rows: int, colour: int) -> np.ndarray:
    """Pixels of `rows` filtered scanlines: re-wrapped as a stored-deflate PNG that libspng unfilters."""
    return _spng_load(_stored_png(raw, width, rows, 0 if colour == 3 else colour), width, rows, colour)


def decode(data: bytes, mode: str) -> np.ndarray | None:
    """Decode an 8-bit PNG, or return None to let OpenCV / PIL handle (or report) it.

    Args:
        data: the file's bytes.
        mode: 'RGB' for images: RGB or RGBA files -> HxWx3, alpha dropped. 'mask' for masks, as `read_mask`
            has PIL read them: greyscale / palette files -> HxW values / palette indices, RGB(A) -> HxWx3.
    """
    header = _header(data, mode)
    if header is None:
        return None
    width, height, colour = header
    try:
        if _isal is None:
            if colour == 3:  # libspng would expand the palette to colours
                return None
            return _spng_load(data, width, height, colour)
        idat = _idat(data)
        if idat is None:
            return None
        raw = _isal.decompress(b"".join(idat))  # checks the stream's Adler-32
        if len(raw) != height * (1 + width * _CHANNELS[colour]):
            return None
        return _unfilter(raw, width, height, colour)
    except Exception:  # corrupt data: the fallback decoder produces the error
        return None


class PngRows:
    """An 8-bit PNG decoded from the top, only as far as asked (`open_rows`).

    Training crops of a rescaled 2048x1024 frame need the rows above the crop's bottom edge: ~0.7 of them on
    average over the Cityscapes recipe's scales. Every chunk's CRC is checked when opening; the stream's
    Adler-32 covers all of it, so it is checked when all rows are read. Rows already decoded are kept; asking
    for more decodes the whole image (a second partial decode would rarely pay).
    """

    def __init__(self, width: int, height: int, colour: int, stream: bytes) -> None:
        self.shape = (height, width, 3) if colour in (2, 6) else (height, width)
        self._colour, self._stride = colour, 1 + width * _CHANNELS[colour]
        self._inflate, self._tail, self._raw = _isal.decompressobj(), stream, b""
        self._decoded: np.ndarray | None = None

    @property
    def rows_read(self) -> int:
        return 0 if self._decoded is None else len(self._decoded)

    def rows(self, count: int) -> np.ndarray:
        """The first `count` rows (clipped to the image), as `decode` gives them. Raises `DecodeError` if the
        data ends early or is malformed."""
        count = max(1, min(int(count), self.shape[0]))
        if count <= self.rows_read:
            return self._decoded[:count]
        if self.rows_read:
            count = self.shape[0]
        try:
            self._decoded = self._decode(count)
        except Exception as e:
            raise DecodeError(f"cannot decode the PNG rows: {e}") from e
        return self._decoded

    def _decode(self, count: int) -> np.ndarray:
        height, width = self.shape[:2]
        need = count * self._stride
        if len(self._raw) < need:
            more = self._inflate.decompress(self._tail, need - len(self._raw))
            self._raw = self._raw + more if self._raw else more  # the first read: no copy of the rows
            self._tail = self._inflate.unconsumed_tail
        if len(self._raw) < need:
            raise ValueError(f"data stream ends after {len(self._raw) // self._stride} of {height} rows")
        if count == height:
            self._inflate.decompress(self._tail)  # the rest: the Adler-32 trailer, checked
            if not self._inflate.eof:
                raise ValueError("data stream ends early")
        return _unfilter(memoryview(self._raw)[:need], width, count, self._colour)


def open_rows(data: bytes, mode: str = "RGB") -> PngRows | None:
    """A `PngRows` for an 8-bit PNG that `decode(data, mode)` handles, or None (not such a PNG, the `fast`
    extra missing, or a damaged file: decode it the usual way, which reports it)."""
    header = _header(data, mode)
    if header is None or _isal is None:
        return None
    idat = _idat(data)
    return None if idat is None else PngRows(*header, b"".join(idat))
