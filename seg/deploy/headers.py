"""Image headers read without decoding: the pixel size and the EXIF orientation.

The size lets ``seg.predict`` refuse a decompression bomb (a few hundred KB declaring 12000x12000) before the
decoder allocates it; the orientation is what `seg.data.check` reports and what decides whether the fast PNG path
may decode a file (`seg.deploy.images` has the decoding rule). Pure Python over the file's first chunks, for the
formats of `seg.deploy.images.IMAGE_EXTENSIONS`, recognised by their signature (not their name): PNG (IHDR,
eXIf), JPEG (SOFn, APP1 Exif), WebP (VP8 / VP8L / VP8X, EXIF), TIFF (IFD0), BMP. Anything else, or a header too
damaged to read, gives None: the decoder then accepts or reports the file.

Orientation values are EXIF's (tag 274): 1 = stored as displayed; 2-8 = mirrored and/or rotated, 5-8 with
width and height swapped on display.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Header", "read_header"]

ORIENTATION_TAG = 274
_EXIF_PREFIX = b"Exif\x00\x00"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length


@dataclass(frozen=True)
class Header:
    """What a file's header declares: its stored size and EXIF orientation (1 when it has none)."""

    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(H, W) once the orientation is applied (5-8 swap the axes)."""
        return (self.width, self.height) if self.orientation >= 5 else (self.height, self.width)


def read_header(data: bytes) -> Header | None:
    """The `Header` of an image file's bytes, or None (unknown format or unreadable header)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            tags = _tiff_tags(data, (256, 257, ORIENTATION_TAG))
            return _header(tags.get(256), tags.get(257), tags.get(ORIENTATION_TAG))
        if data[:2] == b"BM":
            return _bmp(data)
    except struct.error:  # a header cut short
        return None
    return None


def _header(width: int | None, height: int | None, orientation: int | None = None) -> Header | None:
    if not width or not height:
        return None
    return Header(width, height, orientation if orientation in range(1, 9) else 1)  # other values: none (OpenCV)


def _tiff_tags(data: bytes | memoryview, wanted: tuple[int, ...]) -> dict[int, int]:
    """The single SHORT / LONG values of `wanted` tags in IFD0 of a TIFF structure (a TIFF file, or the body of an
    EXIF block), either byte order."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or len(data) < 8 or struct.unpack_from(order + "H", data, 2)[0] != 42:
        return {}
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, ifd)[0] if ifd + 2 <= len(data) else 0
    out = {}
    for pos in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        tag, kind, n = struct.unpack_from(order + "HHI", data, pos)
        if tag in wanted and n == 1 and kind in (3, 4):  # SHORT / LONG, stored in the entry itself
            out[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, pos + 8)[0]
    return out


def _exif_orientation(block: bytes | memoryview) -> int | None:
    """Orientation in an EXIF block (with or without the ``Exif\\0\\0`` prefix that JPEG's APP1 carries)."""
    if bytes(block[:6]) == _EXIF_PREFIX:
        block = block[6:]
    return _tiff_tags(block, (ORIENTATION_TAG,)).get(ORIENTATION_TAG)


def _png(data: bytes) -> Header | None:
    """IHDR's size; the orientation of an eXIf chunk wherever it sits (readers accept it after IDAT too)."""
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    view, pos, orientation = memoryview(data), 8, None
    while pos + 8 <= len(data):  # chunk headers only: a few hundred steps for a 2 MB frame
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            orientation = _exif_orientation(view[pos + 8 : pos + 8 + length])
            break
        if kind == b"IEND":
            break
        pos += 12 + length
    return _header(width, height, orientation)


def _jpeg(data: bytes) -> Header | None:
    """The first SOFn's size and the first Exif APP1's orientation, from the segments before the scan."""
    view, pos, size, orientation, seen_exif = memoryview(data), 2, None, None, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not at a marker: a damaged file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: the header segments are over
            break
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = pos + 4
        if marker in _JPEG_SOF and size is None:
            size = struct.unpack_from(">HH", data, body + 1)  # (height, width) after the sample precision
        elif marker == 0xE1 and not seen_exif and data[body : body + 6] == _EXIF_PREFIX:
            seen_exif, orientation = True, _exif_orientation(view[body : pos + 2 + length])
        pos += 2 + length
    return None if size is None else _header(size[1], size[0], orientation)


def _webp(data: bytes) -> Header | None:
    """Canvas size (VP8X) or the bitstream's (VP8 lossy, VP8L lossless); orientation of an EXIF chunk."""
    view, pos, size, orientation = memoryview(data), 12, None, None
    while pos + 8 <= len(data):
        kind, length = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if kind == b"VP8X":
            size = (
                1 + int.from_bytes(data[body + 4 : body + 7], "little"),
                1 + int.from_bytes(data[body + 7 : body + 10], "little"),
            )
        elif kind == b"VP8 " and size is None:
            w, h = struct.unpack_from("<HH", data, body + 6)  # after the frame tag and start code
            size = (w & 0x3FFF, h & 0x3FFF)
        elif kind == b"VP8L" and size is None and data[body] == 0x2F:
            bits = int.from_bytes(data[body + 1 : body + 5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"EXIF":
            orientation = _exif_orientation(view[body : body + length])
        pos = body + length + (length & 1)  # chunks are padded to an even size
    return None if size is None else _header(size[0], size[1], orientation)


def _bmp(data: bytes) -> Header | None:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)  # a negative height: rows stored top-down
    return _header(abs(width), abs(height))
