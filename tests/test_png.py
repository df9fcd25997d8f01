"""seg.data.png: the fast decoder gives exactly the pixels of an independent decoder (PIL) for every PNG row
filter and colour type it accepts, returns None (-> OpenCV / PIL fallback) for what it does not, and never
hands back damaged data."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from seg.data import base, png

pytest.importorskip("pyspng")
pytest.importorskip("isal")
RNG = np.random.default_rng(0)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (x.astype(np.int16) for x in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode(
    pixels: np.ndarray,
    colour: int,
    filters: np.ndarray,
    idat_size: int = 1000,
    palette: bytes | None = None,
    interlace: int = 0,
) -> bytes:
    """A PNG written from the specification (independently of seg and of libspng): every row filtered with
    the given filter type (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), the stream split over IDAT chunks."""
    h, w = pixels.shape[:2]
    bpp = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * bpp).astype(np.int16)
    zero = np.zeros(w * bpp, np.int16)
    out = []
    for y in range(h):
        x, up = rows[y], rows[y - 1] if y else zero
        left = np.concatenate([np.zeros(bpp, np.int16), x[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int16), up[:-bpp]])
        pred = {0: 0, 1: left, 2: up, 3: (left + up) // 2, 4: _paeth(left, up, upleft)}[int(filters[y])]
        out.append(bytes([filters[y]]) + ((x - pred) % 256).astype(np.uint8).tobytes())
    stream = zlib.compress(b"".join(out), 6)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    parts = [png.SIGNATURE, chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, interlace))]
    if palette is not None:
        parts.append(chunk(b"PLTE", palette))
    parts.append(chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped"))
    parts += [chunk(b"IDAT", stream[i : i + idat_size]) for i in range(0, len(stream), idat_size)]
    return b"".join(parts + [chunk(b"IEND", b"")])


def _pil(data: bytes, convert: str | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert(convert) if convert else im)


def _smooth(h: int, w: int, c: int) -> np.ndarray:
    """Photo-like pixels (gradients + noise), so every filter type has real work to do."""
    y, x = np.mgrid[0:h, 0:w]
    base_ = (x * 3 + y * 5)[..., None] + np.arange(c) * 40
    return ((base_ + RNG.integers(0, 12, (h, w, c))) % 256).astype(np.uint8)


@pytest.mark.parametrize("colour,channels", [(2, 3), (6, 4), (0, 1)])
@pytest.mark.parametrize("filters", ["each", "mixed"])
def test_every_row_filter_decodes_exactly(colour, channels, filters):
    h, w = 37, 53
    pixels = _smooth(h, w, channels)
    if channels == 1:
        pixels = pixels[:, :, 0]
    kinds = np.arange(h) % 5 if filters == "each" else RNG.integers(0, 5, h)
    data = encode(pixels, colour, kinds.astype(np.uint8))
    mode = "mask" if colour == 0 else "RGB"
    out = png.decode(data, mode)
    assert out is not None and out.dtype == np.uint8 and out.flags.c_contiguous
    expected = pixels[:, :, :3] if colour == 6 else pixels
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, _pil(data, "RGB" if colour == 6 else None))  # the file is a real PNG
    if colour in (2, 6):  # masks may be RGB(A) colour masks too: same pixels, alpha dropped as read_mask does
        np.testing.assert_array_equal(png.decode(data, "mask"), expected)


def test_palette_masks_decode_to_their_indices():
    indices = RNG.integers(0, 7, (29, 31), dtype=np.uint8)
    palette = bytes(RNG.integers(0, 256, 7 * 3, dtype=np.uint8))
    data = encode(indices, 3, RNG.integers(0, 5, 29).astype(np.uint8), palette=palette)
    np.testing.assert_array_equal(png.decode(data, "mask"), indices)
    np.testing.assert_array_equal(_pil(data), indices)  # PIL's 'P' array: the indices too
    assert png.decode(data, "RGB") is None  # images: OpenCV expands the palette


@pytest.mark.parametrize("isal", [True, False])
def test_read_image_and_read_mask_use_it_with_the_same_result_as_pil(tmp_path, monkeypatch, isal):
    if not isal:  # libspng alone still decodes RGB and grey; palette masks go to PIL
        monkeypatch.setattr(png, "_isal", None)
    rgb, grey = _smooth(21, 34, 3), _smooth(21, 34, 1)[:, :, 0]
    for name, im in {
        "rgb": Image.fromarray(rgb),
        "grey": Image.fromarray(grey),
        "palette": Image.fromarray(rgb).quantize(40),
    }.items():  # > 16 colours: 8-bit
        im.save(tmp_path / f"{name}.png")
        raw = (tmp_path / f"{name}.png").read_bytes()
        np.testing.assert_array_equal(base.read_mask(tmp_path / f"{name}.png"), _pil(raw), err_msg=name)
        np.testing.assert_array_equal(base.read_image(tmp_path / f"{name}.png"), _pil(raw, "RGB"), err_msg=name)
        handled = png.decode(raw, "mask") is not None
        assert handled == (isal or name != "palette"), name


def test_what_it_does_not_handle_goes_to_the_fallback():
    pixels = _smooth(9, 11, 3)
    assert png.decode(encode(pixels, 2, np.zeros(9, np.uint8), interlace=1), "RGB") is None  # Adam7
    buf = io.BytesIO()
    Image.fromarray((pixels[:, :, 0].astype(np.uint16) * 257)).save(buf, format="PNG")
    assert png.decode(buf.getvalue(), "mask") is None  # 16-bit
    assert png.decode(b"\xff\xd8\xff" + bytes(100), "RGB") is None  # a JPEG
    assert png.decode(encode(pixels, 2, np.zeros(9, np.uint8)), "mask") is not None


def test_damaged_files_are_never_decoded(tmp_path):
    pixels = _smooth(40, 50, 3)
    good = encode(pixels, 2, np.full(40, 4, np.uint8), idat_size=500)
    idat = good.index(b"IDAT")
    flipped = bytearray(good)
    flipped[idat + 200] ^= 0x10  # one bit inside the compressed data: the chunk CRC no longer matches
    assert png.decode(bytes(flipped), "RGB") is None
    assert png.decode(good[: len(good) // 2], "RGB") is None  # truncated
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(flipped))
    with pytest.raises(base.DataError, match="bad.png: cannot decode"):  # the fallback reports the file
        base.read_image(path)
    np.testing.assert_array_equal(png.decode(good, "RGB"), pixels)


# -- decoding only the rows a training crop reads --------------------------------------------------------------


def test_rows_from_the_top_equal_the_whole_decode():
    pixels = _smooth(60, 70, 3)
    data = encode(pixels, 2, RNG.integers(0, 5, 60).astype(np.uint8), idat_size=300)
    rows = png.open_rows(data, "RGB")
    assert rows is not None and rows.shape == (60, 70, 3)
    np.testing.assert_array_equal(rows.rows(17), pixels[:17])
    np.testing.assert_array_equal(rows.rows(5), pixels[:5])  # already decoded: a view of it
    np.testing.assert_array_equal(rows.rows(30), pixels)  # more than before: the whole image, in one go
    assert rows.rows_read == 60
    grey = _smooth(20, 9, 1)[:, :, 0]
    np.testing.assert_array_equal(png.open_rows(encode(grey, 0, np.full(20, 3, np.uint8)), "mask").rows(7), grey[:7])
    assert png.open_rows(encode(grey, 0, np.zeros(20, np.uint8)), "RGB") is None


def test_damage_below_the_rows_read_is_caught_when_they_are_read():
    pixels = _smooth(50, 40, 3)
    good = encode(pixels, 2, np.ones(50, np.uint8), idat_size=100000)
    raw = zlib.decompress(good[good.index(b"IDAT") + 4 : good.index(b"IEND") - 8])
    bad_rows = bytearray(raw)
    bad_rows[45 * (1 + 40 * 3)] = 9  # row 45's filter type: no such filter
    stream = zlib.compress(bytes(bad_rows))
    idat = struct.pack(">I", len(stream)) + b"IDAT" + stream + struct.pack(">I", zlib.crc32(b"IDAT" + stream))
    data = good[: good.index(b"IDAT") - 4] + idat + good[good.index(b"IEND") - 4 :]
    rows = png.open_rows(data, "RGB")
    np.testing.assert_array_equal(rows.rows(20), pixels[:20])  # the rows above the damage are the file's
    with pytest.raises(png.DecodeError):
        rows.rows(50)
    assert png.decode(data, "RGB") is None
