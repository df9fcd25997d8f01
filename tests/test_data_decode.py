"""Decoding: the fast PNG path, libspng and OpenCV give the same pixels; the decode cache is lossless, invalidated by edits,
robust to damaged entries, and never loads anything but plain numbers."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import folder_tree
from PIL import Image

from seg.data import FolderDataset
from seg.data import base as base_module
from seg.data import png as png_module
from seg.data.cache import FileCache, read_entry, write_entry
from seg.data.cache.__main__ import main as cache_main

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (13, 21, 3), dtype=np.uint8)


def _pngs(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """PNG kinds and the RGB pixels each must decode to (computed by PIL, independently of both decoders)."""
    out = {}
    rgba = np.concatenate([RGB, RNG.integers(0, 256, (13, 21, 1), dtype=np.uint8)], -1)
    grey = RGB[:, :, 0]
    for name, im in {
        "rgb": Image.fromarray(RGB),
        "rgba": Image.fromarray(rgba),
        "grey": Image.fromarray(grey),
        "palette": Image.fromarray(RGB).quantize(16),
        "grey16": Image.fromarray((grey.astype(np.uint16) * 257)),
    }.items():
        path = tmp_path / f"{name}.png"
        im.save(path)
        with Image.open(path) as back:
            ref = np.array(back.convert("RGB")) if name != "grey16" else np.repeat(grey[:, :, None], 3, 2)
        out[name] = path, ref
    return out


@pytest.mark.parametrize("decoder", ["opencv", "libspng", "isal+libspng"])
def test_png_kinds_decode_to_the_same_rgb(tmp_path, monkeypatch, decoder):
    if decoder == "opencv":
        monkeypatch.setattr(png_module, "_spng", None)
    else:
        pyspng = pytest.importorskip("pyspng")
        if decoder == "libspng":
            monkeypatch.setattr(png_module, "_isal", None)
        else:
            pytest.importorskip("isal")
        used = []
        monkeypatch.setattr(
            png_module,
            "_spng",
            type("Spy", (), {"load": staticmethod(lambda data, **kw: used.append(1) or pyspng.load(data, **kw))}),
        )
    for name, (path, ref) in _pngs(tmp_path).items():
        img = base_module.read_image(path)
        assert img.dtype == np.uint8 and img.shape == (13, 21, 3) and img.flags.c_contiguous, name
        np.testing.assert_array_equal(img, ref, err_msg=name)
    if decoder != "opencv":
        assert len(used) == 2  # the 8-bit RGB and RGBA files; the others went to OpenCV


def test_corrupt_png_is_a_clear_error_with_either_decoder(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(_pngs(tmp_path)["rgb"][0].read_bytes()[:60])  # valid header, truncated data
    with pytest.raises(base_module.DataError, match="bad.png: cannot decode image"):
        base_module.read_image(path)


def test_cache_is_lossless_and_replaces_decoding(tmp_path, monkeypatch):
    folder_tree(tmp_path / "d", n=2, size=(24, 32), values=[0, 1, 2, 255])
    plain = FolderDataset(tmp_path / "d", "train", classes=["a", "b", "c"])
    cached = FolderDataset(tmp_path / "d", "train", classes=["a", "b", "c"])
    cached.set_cache(tmp_path / "cache")
    cached.load(0), cached.load(1)  # decodes and stores
    expected = [plain.load(i) for i in range(2)]
    entries = sorted((tmp_path / "cache").glob("*/*.bin"))
    assert len(entries) == 4  # image + mask per sample
    sizes = sorted(e.stat().st_size for e in entries)
    assert sizes[0] < 24 * 32 // 4 < 24 * 32 * 3 < sizes[-1]  # band masks stored compressed, noise images raw
    monkeypatch.setattr(base_module, "read_image", lambda p: pytest.fail(f"decoded {p} again"))
    monkeypatch.setattr(base_module, "read_mask", lambda p: pytest.fail(f"decoded {p} again"))
    for i in range(2):
        (img, mask), (img1, mask1) = cached.load(i), expected[i]
        np.testing.assert_array_equal(img, img1)
        np.testing.assert_array_equal(mask, mask1)
        assert img.flags.writeable and mask.dtype == np.uint8


def test_cache_follows_edits_and_survives_damaged_entries(tmp_path):
    folder_tree(tmp_path / "d", n=1, size=(24, 32), values=[0, 1])
    ds = FolderDataset(tmp_path / "d", "train", classes=["a", "b", "c"])
    ds.set_cache(tmp_path / "cache")
    assert set(np.unique(ds.load(0)[1])) == {0, 1}
    mask_file = tmp_path / "d/train/masks/im0.png"
    Image.fromarray(np.full((24, 32), 2, np.uint8)).save(mask_file)
    os.utime(mask_file, ns=(10**18, 10**18))  # a different mtime even on coarse-clock filesystems
    assert set(np.unique(ds.load(0)[1])) == {2}  # the edit is seen, not the stale entry
    entry = ds.cache.entry(mask_file)
    entry.write_bytes(entry.read_bytes()[:-3])  # damaged entry: warned about, decoded again, rewritten
    with pytest.warns(UserWarning, match="damaged cache entry"):
        assert set(np.unique(ds.load(0)[1])) == {2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(np.unique(ds.load(0)[1])) == {2}


def test_cache_detects_flipped_bytes_in_an_uncompressed_entry(tmp_path):
    """A flipped byte in an image entry (stored uncompressed, no zlib check) was served as pixels; every entry now
    ends with a CRC-32: the damage is warned about once, naming the entry, and the source decoded afresh."""
    folder_tree(tmp_path / "d", n=1, size=(24, 32), values=[0, 1])
    image_file = tmp_path / "d/train/images/im0.png"
    expected = np.array(Image.open(image_file).convert("RGB"))  # PIL: independent of both decoders and the cache
    ds = FolderDataset(tmp_path / "d", "train", classes=["a", "b"])
    ds.set_cache(tmp_path / "cache")
    np.testing.assert_array_equal(ds.load(0)[0], expected)  # decodes and stores
    entry = ds.cache.entry(image_file)
    raw = bytearray(entry.read_bytes())
    assert raw.count(bytes(expected.tobytes()[:64])) == 1  # uncompressed: the pixels lie in the file as they are
    start = raw.index(bytes(expected.tobytes()[:64])) + 100
    raw[start : start + 8] = bytes(255 - b for b in raw[start : start + 8])
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=rf"{entry.name}: damaged cache entry for .*im0.png") as caught:
        np.testing.assert_array_equal(ds.load(0)[0], expected)
    assert len([w for w in caught if "damaged cache entry" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: read back quietly, and right
        np.testing.assert_array_equal(ds.load(0)[0], expected)


def test_cache_warns_once_per_damaged_entry_it_cannot_rewrite(tmp_path, monkeypatch):
    folder_tree(tmp_path / "d", n=1, size=(24, 32), values=[0, 1])
    ds = FolderDataset(tmp_path / "d", "train", classes=["a", "b"])
    ds.set_cache(tmp_path / "cache")
    ds.load(0)
    entry = ds.cache.entry(tmp_path / "d/train/masks/im0.png")
    entry.write_bytes(entry.read_bytes()[:-1] + b"?")
    monkeypatch.setattr(ds.cache, "_store", lambda entry, array: None)  # e.g. a read-only cache folder
    with pytest.warns(UserWarning, match="damaged cache entry") as caught:
        for _ in range(3):
            assert set(np.unique(ds.load(0)[1])) == {0, 1}
    assert len([w for w in caught if "damaged cache entry" in str(w.message)]) == 1


def test_cache_sees_a_same_size_replacement_with_its_time_preserved(tmp_path):
    """``cp -p`` of another file of the same size keeps the time: size + mtime served the old pixels."""
    folder_tree(tmp_path / "d", n=1, size=(24, 32), values=[0, 1])
    mask_file = tmp_path / "d/train/masks/im0.png"
    Image.fromarray(np.full((24, 32), 0, np.uint8)).save(mask_file, compress_level=0)
    ds = FolderDataset(tmp_path / "d", "train", classes=["a", "b"])
    ds.set_cache(tmp_path / "cache")
    assert set(np.unique(ds.load(0)[1])) == {0}
    replacement = tmp_path / "other.png"
    Image.fromarray(np.full((24, 32), 1, np.uint8)).save(replacement, compress_level=0)
    before = mask_file.stat()
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    shutil.copy2(replacement, mask_file)  # cp -p
    after = mask_file.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert set(np.unique(ds.load(0)[1])) == {1}


def test_cache_entries_hold_only_plain_numbers(tmp_path):
    write_entry(tmp_path / "ok.bin", np.arange(12, dtype=np.int32).reshape(3, 4))
    np.testing.assert_array_equal(read_entry(tmp_path / "ok.bin"), np.arange(12).reshape(3, 4))
    evil = tmp_path / "evil.bin"
    header = b"SEGCACHE2\n" + json.dumps({"dtype": "|O", "shape": [1], "zlib": False}).encode() + b"\n"
    evil.write_bytes(header + b"x" * 8 + zlib.crc32(header + b"x" * 8).to_bytes(4, "big"))  # an object array: refused
    with pytest.raises(ValueError, match="unsupported entry"):
        read_entry(evil)
    with pytest.raises(ValueError, match="not a seg cache entry"):
        (tmp_path / "npy.bin").write_bytes(b"\x93NUMPY" + b"\0" * 40)
        read_entry(tmp_path / "npy.bin")


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot use it as the decode cache"):
        FileCache(blocker / "cache")


def test_cache_cli_fills_every_split(tmp_path, capsys):
    folder_tree(tmp_path / "d", "train", n=2, classes=["a", "b", "c"])
    folder_tree(tmp_path / "d", "val", n=1, classes=["a", "b", "c"])
    cache_main(
        ["--dataset", "folder", "--root", str(tmp_path / "d"), "--cache_dir", str(tmp_path / "c"), "--workers", "0"]
    )
    out = capsys.readouterr().out
    assert "train: 2 samples" in out and "val: 1 samples" in out
    assert len(list((tmp_path / "c").glob("*/*.bin"))) == 6


def test_data_bench_reports_the_split(capsys):
    from seg.data.bench import main as bench_main

    threads = torch.get_num_threads()
    bench_main(["--iters", "2", "--crop", "64", "128"])
    assert torch.get_num_threads() == threads  # the bench's one-thread setting does not leak into the caller
    out = capsys.readouterr().out
    for row in (
        "decode PNG pair",
        "decode from cache",
        "augment only",
        "decode PNG + augment (training)",
        "decode cache + augment",
        "workers for 90",
    ):
        assert row in out, out


# -- the training crop decodes only the PNG rows it reads ------------------------------------------------------


def _fake_cityscapes(tmp_path: Path, n: int = 3) -> Path:
    from seg.data.bench import write_fake_cityscapes

    root = tmp_path / "cityscapes"
    write_fake_cityscapes(root, n=n, size=(256, 512))
    return root


def test_training_crop_reads_only_the_rows_it_needs_with_the_same_result(tmp_path, monkeypatch):
    pytest.importorskip("pyspng")
    pytest.importorskip("isal")
    from seg.data import CityscapesDataset
    from seg.data.transforms import build_eval_transform, build_train_transform

    root = _fake_cityscapes(tmp_path)
    lazy, whole = (
        CityscapesDataset(root, "train", transform=build_train_transform((96, 192), (256, 512), seed=0))
        for _ in range(2)
    )
    monkeypatch.setattr(whole, "_row_reader", lambda: None)
    asked = []
    rows = png_module.PngRows.rows
    monkeypatch.setattr(png_module.PngRows, "rows", lambda self, n: asked.append((n, self.shape[0])) or rows(self, n))
    for seed in range(40):
        lazy.reseed(seed)
        whole.reseed(seed)
        a, b = lazy[seed % 3], whole[seed % 3]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]), seed
    fractions = [n / h for n, h in asked]
    assert 0.4 < np.mean(fractions) < 0.9  # the recipe's scales: ~0.7 of the rows on average
    assert min(fractions) < 0.5 and max(fractions) == 1.0
    assert len(asked) >= 80  # image and mask, every sample
    cached = CityscapesDataset(root, "train", transform=build_train_transform((96, 192), (256, 512)))
    cached.set_cache(tmp_path / "cache")
    evaluated = CityscapesDataset(root, "train", transform=build_eval_transform((256, 512)))
    assert cached._row_reader() is None and evaluated._row_reader() is None and lazy._row_reader() is not None


def test_training_crop_checks_the_labels_it_reads_and_falls_back_on_damage(tmp_path, monkeypatch):
    pytest.importorskip("pyspng")
    pytest.importorskip("isal")
    from seg.data import CityscapesDataset, DataError
    from seg.data.transforms import build_train_transform

    root = _fake_cityscapes(tmp_path, n=1)
    lazy, whole = (
        CityscapesDataset(root, "train", transform=build_train_transform((96, 192), (256, 512), seed=0))
        for _ in range(2)
    )
    monkeypatch.setattr(whole, "_row_reader", lambda: None)
    for seed in range(3):  # damaged data found while cropping: the usual decode runs with the same draws
        lazy.reseed(seed)
        whole.reseed(seed)
        with monkeypatch.context() as m:
            m.setattr(png_module.PngRows, "rows", lambda self, n: (_ for _ in ()).throw(png_module.DecodeError("x")))
            a = lazy[0]
        b = whole[0]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    mask_path = next(root.rglob("*_labelIds.png"))
    labels = np.array(Image.open(mask_path))
    labels[:5] = 250  # not a Cityscapes label id, in rows every crop reads
    Image.fromarray(labels).save(mask_path)
    with pytest.raises(DataError, match=f"{mask_path.name}: mask values 250 are neither"):
        lazy[0]
    Image.fromarray(labels[:100]).save(mask_path)  # and a mask of another size than its image
    with pytest.raises(DataError, match=f"{mask_path.name}: mask size 100x512 \\(HxW\\) does not match image"):
        lazy[0]


def test_without_the_fast_extra_training_decodes_whole_files(tmp_path, monkeypatch):
    from seg.data import CityscapesDataset
    from seg.data.transforms import build_train_transform

    root = _fake_cityscapes(tmp_path, n=1)
    ds = CityscapesDataset(root, "train", transform=build_train_transform((96, 192), (256, 512), seed=0))
    monkeypatch.setattr(png_module, "_isal", None)
    assert ds._transform_reading_rows(0) is None  # no row-limited decode: the usual path
    sample = ds[0]
    assert sample["image"].shape == (3, 96, 192) and sample["mask"].shape == (96, 192)
