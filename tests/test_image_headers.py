"""seg.deploy.headers and the pieces of seg.deploy.images / outputs that the commands' tests (test_inputs.py) rely
on: header sizes and orientations against PIL's reading of the same files, the pixel limit checked before any
decoding, one extension list, and output names that never meet."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import bomb_png
from PIL import Image

from seg.data import base as base_module
from seg.deploy import images
from seg.deploy.headers import read_header
from seg.deploy.outputs import output_stems


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0112], exif[0x0131] = "Phone", orientation, "camera app"  # the tag between two others
    return exif


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
FILES = {
    "png rgb": lambda o: _encode(RGB, "PNG", exif=_exif(o)),
    "png palette": lambda o: _encode(RGB.convert("P"), "PNG", exif=_exif(o)),
    "png 16-bit grey": lambda o: _encode(RGB.convert("I;16"), "PNG", exif=_exif(o)),
    "jpeg baseline": lambda o: _encode(RGB, "JPEG", exif=_exif(o)),
    "jpeg progressive": lambda o: _encode(RGB, "JPEG", exif=_exif(o), progressive=True),
    "jpeg grey": lambda o: _encode(RGB.convert("L"), "JPEG", exif=_exif(o)),
    "webp lossy": lambda o: _encode(RGB, "WEBP", exif=_exif(o)),
    "webp lossless": lambda o: _encode(RGB, "WEBP", exif=_exif(o), lossless=True),
    "webp plain": lambda o: _encode(RGB, "WEBP"),  # no EXIF: a VP8 chunk alone, no VP8X
    "webp plain lossless": lambda o: _encode(RGB, "WEBP", lossless=True),  # VP8L alone
    "tiff": lambda o: _encode(RGB, "TIFF", exif=_exif(o)),
    "bmp": lambda o: _encode(RGB, "BMP"),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_header_reads_what_pil_reads(kind):
    """The size written, from the header alone; the orientation PIL reads from the same bytes' EXIF block."""
    for orientation in (1, 3, 6, 8):
        data = FILES[kind](orientation)
        header = read_header(data)
        with Image.open(io.BytesIO(data)) as im:
            exif = im.getexif()  # TIFF: IFD0 itself; PNG: loads the file to find eXIf wherever it is
            assert (header.width, header.height) == (53, 37), kind  # as stored (PIL's TIFF size is turned)
            assert header.orientation == exif.get(0x0112, 1), (kind, orientation)


def test_big_endian_exif_as_iphones_write_it(tmp_path):
    """A "MM" (Motorola) EXIF block in a JPEG's APP1: the header reads orientation 6, and OpenCV, which decodes the
    file (`decode_image`), turns it the same way."""
    ifd = struct.pack(">H", 2)
    ifd += struct.pack(">HHI4s", 0x0110, 2, 4, b"X10\0")  # Model, ASCII inline
    ifd += struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)  # Orientation, SHORT, left-justified
    ifd += struct.pack(">I", 0)  # no next IFD
    block = b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd
    jpeg = _encode(RGB, "JPEG", quality=95)
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block + jpeg[2:]
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6  # PIL agrees the block is well formed
    header = read_header(data)
    assert (header.width, header.height, header.orientation) == (53, 37, 6)
    assert header.displayed_size == (53, 37)
    assert images.decode_image(data, "x.jpg").shape == (53, 37, 3)


def test_unknown_or_cut_headers_give_none():
    png = FILES["png rgb"](1)
    for data in (b"", b"GIF89a" + bytes(40), png[:20], FILES["jpeg baseline"](1)[:30], b"RIFF\0\0\0\0WEBPVP8X"):
        assert read_header(data) is None, data[:12]


def test_oversized_image_is_refused_from_its_header_before_decoding(monkeypatch):
    """A 12000x12000 PNG declared over a few bytes: refused before OpenCV allocates anything, naming the size
    and the flag; PIL's lazy open reads the same size (an independent header reader)."""
    data = bomb_png()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(io.BytesIO(data)).size == (12000, 12000)
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("decoded before the size check"))
    with pytest.raises(images.ImageError, match=r"big.png: 12000x12000 \(W x H\) = 144000000 pixels.*89478485"):
        images.decode_image(data, "big.png", images.MAX_PIXELS)
    assert images.MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb threshold


def test_empty_and_corrupt_files_name_the_file():
    with pytest.raises(images.ImageError, match="a.png: empty file"):
        images.decode_image(b"", "a.png")
    with pytest.raises(images.ImageError, match="b.jpg: cannot decode image"):
        images.decode_image(b"\xff\xd8\xff\xe0 not a jpeg", "b.jpg")


def test_one_extension_list_for_datasets_and_predict(tmp_path):
    assert base_module.IMAGE_EXTENSIONS is images.IMAGE_EXTENSIONS
    for ext in (*images.IMAGE_EXTENSIONS, ".PNG", ".txt"):
        (tmp_path / f"f{ext.strip('.')}{ext}").write_bytes(b"")
    listed = {p.suffix for p in images.list_images(tmp_path)}
    assert listed == {*images.IMAGE_EXTENSIONS, ".PNG"}


@pytest.mark.parametrize(
    "names, expected",
    [
        (["a.png", "b.jpg"], ["a", "b"]),
        (["x.jpg", "x.png", "y.webp"], ["x.jpg", "x.png", "y"]),
        (["X.jpg", "x.png"], ["X.jpg", "x.png"]),  # one file on macOS / Windows
        (["x.jpg", "x_color.png"], ["x.jpg", "x_color.png"]),  # x's colour mask is x_color's index mask
        (["x.jpg", "x.jpg.png", "x.png"], ["x.jpg", "x.jpg.png", "x.png"]),  # whole names: a second round
    ],
)
def test_output_stems_never_meet(names, expected):
    paths = [Path("in") / n for n in names]
    stems = output_stems(paths)
    assert [stems[p] for p in paths] == expected
    outputs = [f"{s}{tail}".casefold() for s in stems.values() for tail in (".png", "_color.png", "_overlay.jpg")]
    assert len(set(outputs)) == len(outputs)


def test_decode_matches_opencv_default_reader_on_jpeg(tmp_path):
    """For an oriented JPEG the one rule gives what OpenCV's own default ``imread`` gives (the reader seg.predict
    used before), so predictions of upright images are unchanged."""
    path = tmp_path / "p.jpg"
    path.write_bytes(FILES["jpeg baseline"](6))
    np.testing.assert_array_equal(images.read_rgb(path), cv2.imread(str(path))[..., ::-1])
