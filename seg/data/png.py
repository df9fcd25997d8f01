"""Fast, exact decoding of 8-bit PNGs with the optional `fast` extra (``pip install "seg[fast]"``).

A PNG is a zlib stream of filtered rows. Decoding a 2048x1024 Cityscapes frame with libpng or libspng spends
~19 of its ~20 ms in zlib's inflate. With both extras installed:

1. the IDAT stream is inflated by ISA-L (`isal`, SIMD inflate, ~2.5x zlib), its Adler-32 and every chunk's
   CRC checked as zlib/libspng would;
2. the inflated (still filtered) rows are re-wrapped as an uncompressed ("stored") zlib stream in a minimal
   PNG, which libspng (`pyspng`) unfilters in C at memcpy speed.

The pixels are exactly libspng's / libpng's (tests compare against PIL on every filter type). A palette PNG's
unfiltered bytes are its indices, so it is re-wrapped as greyscale to read them. Only libspng present: plain
libspng. Anything unusual (interlaced, 16-bit, grey+alpha, malformed) returns None and the caller falls back
to OpenCV / PIL, which decode it or report the file.
"""
from __future__ import annotations

import struct

import numpy as np

try:  # optional: libspng, ~1.25x OpenCV's libpng on its own
    import pyspng as _spng
except ImportError:  # pragma: no cover - depends on the environment
    _spng = None
try:  # optional: ISA-L inflate, ~2.5x zlib's
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the environment
    _isal = None

SIGNATURE = b'\x89PNG\r\n\x1a\n'
_CHANNELS = {0: 1, 2: 3, 3: 1, 6: 4}  # colour type -> samples per pixel (8-bit)
_STORED_BLOCK = 65535


def backend() -> str:
    """Which decoder `decode` uses for 8-bit PNGs, for reports."""
    if _spng is None:
        return 'OpenCV / PIL (libpng)'
    return 'ISA-L inflate + libspng' if _isal is not None else 'libspng (pyspng)'


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = _isal.crc32(data, _isal.crc32(kind))  # ISA-L's SIMD CRC: ~10x zlib's on a 6 MB IDAT
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def _stored_zlib(raw: bytes) -> bytes:
    """`raw` as a zlib stream of stored (uncompressed) deflate blocks."""
    parts = [b'\x78\x01']
    for start in range(0, len(raw), _STORED_BLOCK):
        block = raw[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(raw)
        parts.append(struct.pack('<BHH', final, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    parts.append(struct.pack('>I', _isal.adler32(raw)))
    return b''.join(parts)


def _inflated_rows(data: bytes, width: int, height: int, colour: int) -> bytes | None:
    """The filtered scanlines of a non-interlaced 8-bit PNG, or None if the file is malformed."""
    view, idat, pos, end = memoryview(data), [], 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], 'big')
        kind, body_end = data[pos + 4:pos + 8], pos + 8 + length
        if body_end + 4 > end:
            return None
        if kind == b'IDAT' or kind == b'IHDR':
            if _isal.crc32(view[pos + 4:body_end]) != int.from_bytes(data[body_end:body_end + 4], 'big'):
                return None
            if kind == b'IDAT':
                idat.append(view[pos + 8:body_end])
        elif kind == b'IEND':
            break
        pos = body_end + 4
    if not idat:
        return None
    raw = _isal.decompress(b''.join(idat))  # checks the stream's Adler-32
    return raw if len(raw) == height * (1 + width * _CHANNELS[colour]) else None


def decode(data: bytes, mode: str) -> np.ndarray | None:
    """Decode an 8-bit PNG, or return None to let OpenCV / PIL handle (or report) it.

    Args:
        data: the file's bytes.
        mode: 'RGB' for images: RGB or RGBA files -> HxWx3, alpha dropped. 'mask' for masks, as `read_mask`
            has PIL read them: greyscale / palette files -> HxW values / palette indices, RGB(A) -> HxWx3.
    """
    if _spng is None or len(data) < 33 or not data.startswith(SIGNATURE) or data[12:16] != b'IHDR':
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB', data[16:29])
    kinds = (2, 6) if mode == 'RGB' else (0, 2, 3, 6)
    if depth != 8 or interlace or colour not in kinds or not width or not height:
        return None
    fmt = 'RGB' if colour in (2, 6) else 'L'
    try:
        if _isal is None:
            if colour == 3:  # libspng would expand the palette to colours
                return None
            out = _spng.load(data, format=fmt)
        else:
            raw = _inflated_rows(data, width, height, colour)
            if raw is None:
                return None
            header = struct.pack('>IIBBBBB', width, height, 8, 0 if colour == 3 else colour, 0, 0, 0)
            out = _spng.load(SIGNATURE + _chunk(b'IHDR', header) + _chunk(b'IDAT', _stored_zlib(raw))
                             + _chunk(b'IEND', b''), format=fmt)
    except Exception:  # corrupt data: the fallback decoder produces the error
        return None
    shape = (height, width, 3) if fmt == 'RGB' else (height, width)
    return out if out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous else None
