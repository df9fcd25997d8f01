"""seg.data datasets: layouts, label mapping, and every bad-input case (errors must name the file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import blocks_mask, folder_tree, write_mask, write_rgb
from PIL import Image

from seg.data import ADE20KDataset, CityscapesDataset, DataError, FolderDataset
from seg.data.check import main as check_main

# --------------------------------------------------------------------------------------------------- layouts


def _check_contract(sample: dict, h: int, w: int) -> None:
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (h, w, 3)
    assert sample["mask"].dtype == np.int64 and sample["mask"].shape == (h, w)
    assert isinstance(sample["path"], str)


def test_folder_index_masks(tmp_path):
    folder_tree(tmp_path, n=2, values=[0, 1, 2, 255])
    ds = FolderDataset(tmp_path, "train", classes=["a", "b", "c"])
    assert len(ds) == 2 and ds.classes == ["a", "b", "c"] and len(ds.palette) == 3 and ds.ignore_index == 255
    s = ds[0]
    _check_contract(s, 24, 32)
    np.testing.assert_array_equal(s["mask"], blocks_mask(24, 32, [0, 1, 2, 255]))
    assert s["path"].endswith("im0.png")


def test_folder_reads_classes_json_and_custom_ignore(tmp_path):
    folder_tree(tmp_path, n=1, values=[0, 1, 9], classes=["x", "y"])
    ds = FolderDataset(tmp_path, "train", ignore_index=9)  # 9 in the files means ignore
    assert ds.classes == ["x", "y"]
    assert set(np.unique(ds[0]["mask"])) == {0, 1, 255}


def _palette_tree(root: Path) -> list[tuple[int, int, int]]:
    """One 10x12 RGB colour mask: bands bg | red | blue | (1, 2, 3) (not in the palette) | (224, 224, 192)."""
    mask = np.zeros((10, 12, 3), np.uint8)
    mask[:, 4:8] = (255, 0, 0)
    mask[:, 8:10] = (0, 0, 255)
    mask[:, 10] = (1, 2, 3)
    mask[:, 11] = (224, 224, 192)
    write_rgb(root / "train/images/a.jpg", np.zeros((10, 12, 3), np.uint8))
    write_mask(root / "train/masks/a.png", mask)
    return [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def test_folder_palette_masks_unknown_colours_are_an_error(tmp_path):
    palette = _palette_tree(tmp_path)
    ds = FolderDataset(tmp_path, "train", classes=["bg", "red", "blue"], palette=palette)
    with pytest.raises(
        DataError,
        match=r"masks/a\.png: 20 pixels \(16\.67%\) have colours that are not in the palette: "
        r"\(1, 2, 3\): 10 px, \(224, 224, 192\): 10 px\. Add",
    ):
        ds[0]
    # the two ways to fix it: declare ignore colours (argument or classes.json), or add a class colour
    ds = FolderDataset(
        tmp_path, "train", classes=["bg", "red", "blue"], palette=palette, ignore_colors=[(1, 2, 3), (224, 224, 192)]
    )
    m = ds[0]["mask"]
    assert (m[:, :4] == 0).all() and (m[:, 4:8] == 1).all() and (m[:, 8:10] == 2).all() and (m[:, 10:] == 255).all()
    (tmp_path / "classes.json").write_text(
        json.dumps({"classes": ["bg", "red", "blue", "x"], "ignore_colors": [[224, 224, 192]]})
    )
    ds = FolderDataset(tmp_path, "train", palette=palette + [(1, 2, 3)])
    assert ds.palette == palette + [(1, 2, 3)]
    m = ds[0]["mask"]
    assert (m[:, 10] == 3).all() and (m[:, 11] == 255).all()


def test_check_reports_unknown_colours_per_file(tmp_path, capsys):
    palette = _palette_tree(tmp_path)
    write_rgb(tmp_path / "train/images/b.png", np.zeros((10, 12, 3), np.uint8))
    write_mask(tmp_path / "train/masks/b.png", np.zeros((10, 12, 3), np.uint8))  # clean
    args = [
        "--root",
        str(tmp_path),
        "--classes",
        "bg,red,blue",
        "--palette",
        ";".join(",".join(map(str, c)) for c in palette),
    ]
    assert check_main(args) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "masks/a.png: 20 pixels" in out and "(224, 224, 192): 10 px" in out
    assert check_main(args + ["--ignore_colors", "1,2,3;224,224,192"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_jpeg_masks_are_rejected_by_content(tmp_path, capsys):
    """JPEG masks, whatever their name: lossy compression mislabels edges (here: exact to the eye, wrong in values)."""
    import cv2

    folder_tree(tmp_path, n=2, values=[0, 1, 2], classes=["a", "b", "c"])
    ok, jpg = cv2.imencode(".jpg", blocks_mask(24, 32, [0, 1, 2]) * 100, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "train/masks/im1.png").write_bytes(jpg.tobytes())  # a JPEG saved under .png
    ds = FolderDataset(tmp_path, "train")
    ds[0]
    with pytest.raises(DataError, match=r"masks/im1\.png: this mask is a JPEG file \(named \.png\)"):
        ds[1]
    assert check_main(["--root", str(tmp_path), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "im1.png: this mask is a JPEG file" in out


def test_folder_palettised_png_uses_indices(tmp_path):
    write_rgb(tmp_path / "train/images/a.png", np.zeros((8, 8, 3), np.uint8))
    p = Image.fromarray(blocks_mask(8, 8, [0, 1]), mode="P")
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    (tmp_path / "train/masks").mkdir(parents=True)
    p.save(tmp_path / "train/masks/a.png")
    ds = FolderDataset(tmp_path, "train", classes=["a", "b"])
    np.testing.assert_array_equal(ds[0]["mask"], blocks_mask(8, 8, [0, 1]))


def _cityscapes_tree(root: Path) -> np.ndarray:
    ids = np.array([[0, 7, 8, 26, 33, 1, 24, 255]], np.uint8).repeat(4, 0)
    write_rgb(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", np.zeros((4, 8, 3), np.uint8))
    write_mask(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", ids)
    train_ids = np.array([[255, 0, 1, 13, 18, 255, 11, 255]], np.uint8).repeat(4, 0)
    write_mask(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", train_ids)
    return train_ids


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    expected = _cityscapes_tree(tmp_path)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 1 and len(ds.classes) == 19 and len(ds.palette) == 19 and ds.classes[13] == "car"
    s = ds[0]
    _check_contract(s, 4, 8)
    np.testing.assert_array_equal(s["mask"], expected)
    ds2 = CityscapesDataset(tmp_path, "train", label_train_ids=True)
    np.testing.assert_array_equal(ds2[0]["mask"], expected)


def test_cityscapes_invalid_values(tmp_path):
    _cityscapes_tree(tmp_path)
    bad = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    write_mask(bad, np.full((4, 8), 19, np.uint8))  # 19 is not a train id
    with pytest.raises(DataError, match=r"labelTrainIds\.png.*19"):
        CityscapesDataset(tmp_path, "train", label_train_ids=True)[0]
    lab = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_mask(lab, np.full((4, 8), 40, np.uint8))
    with pytest.raises(DataError, match=r"labelIds\.png.*40"):
        CityscapesDataset(tmp_path, "train")[0]


def test_ade20k_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    write_rgb(base / "images/training/ADE_train_00000001.jpg", np.zeros((4, 6, 3), np.uint8))
    write_mask(base / "annotations/training/ADE_train_00000001.png", np.array([[0, 1, 2, 150, 75, 0]] * 4, np.uint8))
    for root in (tmp_path, base):
        ds = ADE20KDataset(root, "train")  # alias of 'training'
        assert len(ds.classes) == 150 and len(ds.palette) == 150
        s = ds[0]
        _check_contract(s, 4, 6)
        np.testing.assert_array_equal(s["mask"][0], [255, 0, 1, 149, 74, 255])
    write_mask(base / "annotations/training/ADE_train_00000001.png", np.full((4, 6), 151, np.uint8))
    with pytest.raises(DataError, match=r"ADE_train_00000001\.png.*151"):
        ADE20KDataset(tmp_path, "training")[0]


# ------------------------------------------------------------------------------------------------ bad input


def test_corrupt_image_names_file(tmp_path):
    folder_tree(tmp_path, n=2)
    (tmp_path / "train/images/im1.png").write_bytes(b"not a png at all")
    ds = FolderDataset(tmp_path, "train", classes=["a", "b", "c"])
    ds[0]
    with pytest.raises(DataError, match=r"im1\.png.*cannot decode image"):
        ds[1]


def test_empty_image_file(tmp_path):
    folder_tree(tmp_path, n=1)
    (tmp_path / "train/images/im0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"images/im0\.png"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]


def test_corrupt_mask_names_file(tmp_path):
    folder_tree(tmp_path, n=1)
    (tmp_path / "train/masks/im0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"masks/im0\.png.*cannot decode mask"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]


def test_size_mismatch_names_both_files(tmp_path):
    folder_tree(tmp_path, n=1, size=(24, 32))
    write_mask(tmp_path / "train/masks/im0.png", np.zeros((24, 30), np.uint8))
    with pytest.raises(DataError, match=r"masks/im0\.png.*24x30 \(HxW\).*images/im0\.png.*24x32"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]


def test_mask_value_not_a_class(tmp_path):
    folder_tree(tmp_path, n=1, values=[0, 1, 5, 7, 255])
    with pytest.raises(DataError, match=r"masks/im0\.png: mask values 5, 7 are neither a class nor ignore"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]


def test_rgb_mask_without_palette(tmp_path):
    folder_tree(tmp_path, n=1)
    write_mask(tmp_path / "train/masks/im0.png", np.random.default_rng(0).integers(0, 3, (24, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"masks/im0\.png: RGB colour mask but no palette"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]
    # a grayscale index mask saved as RGB is unambiguous and accepted
    write_mask(tmp_path / "train/masks/im0.png", np.repeat(blocks_mask(24, 32, [0, 2])[..., None], 3, 2))
    assert set(np.unique(FolderDataset(tmp_path, "train", classes=["a", "b", "c"])[0]["mask"])) == {0, 2}


def test_missing_and_empty_split(tmp_path):
    with pytest.raises(DataError, match=r"val/images: missing folder"):
        FolderDataset(folder_tree(tmp_path), "val", classes=["a", "b", "c"])
    (tmp_path / "empty/images").mkdir(parents=True)
    (tmp_path / "empty/masks").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty split"):
        FolderDataset(tmp_path, "empty", classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"leftImg8bit/train: missing folder"):
        CityscapesDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"images/validation: missing folder"):
        ADE20KDataset(tmp_path, "val")


def test_image_without_mask(tmp_path):
    folder_tree(tmp_path, n=2)
    (tmp_path / "train/masks/im1.png").unlink()
    with pytest.raises(DataError, match=r"image without mask: .*images/im1\.png .*expected .*masks/im1\.png"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"])


def test_no_classes(tmp_path):
    folder_tree(tmp_path, n=1)
    with pytest.raises(DataError, match=r"classes\.json"):
        FolderDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"palette must hold 3"):
        FolderDataset(tmp_path, "train", classes=["a", "b", "c"], palette=[(0, 0, 0)])


def test_check_reports_every_problem(tmp_path, capsys):
    folder_tree(tmp_path, n=5, classes=["a", "b", "c"])
    (tmp_path / "train/images/im0.png").write_bytes(b"junk")  # corrupt image
    write_mask(tmp_path / "train/masks/im1.png", np.zeros((5, 5), np.uint8))  # size mismatch
    write_mask(tmp_path / "train/masks/im2.png", np.full((24, 32), 9, np.uint8))  # bad value
    (tmp_path / "train/masks/im3.png").unlink()  # image without mask
    rc = check_main(["--dataset", "folder", "--root", str(tmp_path), "--split", "train"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "4 problem(s)" in out
    for needle in ["images/im0.png", "masks/im1.png", "masks/im2.png: mask values 9", "images/im3.png has no mask"]:
        assert needle in out, needle
    assert "32 x 24" not in out and "24 x 32: 1" in out  # the one good sample (im4), H x W
    assert "class pixel frequencies" in out


def test_check_clean_split(tmp_path, capsys):
    folder_tree(tmp_path, n=2, values=[0, 1, 1, 255], classes=["a", "b", "c"])
    # 'c' absent while a quarter of every mask is an ignore region: what 0/255 masks look like
    # (tests/test_data_labels.py), unless the split really lacks 'c'
    rc = check_main(["--root", str(tmp_path), "--split", "train", "--allow_missing_classes"])
    out = capsys.readouterr().out
    assert rc == 0 and "no problems found" in out
    import re

    assert (
        re.search(r"0 a +25\.0000%", out) and re.search(r"1 b +50\.0000%", out) and re.search(r"255 <ignore> +25", out)
    )
    assert "classes with no pixels: c" in out
    assert check_main(["--root", str(tmp_path), "--split", "nope"]) == 1
    assert "missing folder" in capsys.readouterr().out


def test_check_cli_subprocess(tmp_path):
    """The user-facing command itself (python -m seg.data.check)."""
    import subprocess
    import sys

    folder_tree(tmp_path, n=2, values=[0, 4], classes=["a", "b", "c"])
    r = subprocess.run(
        [sys.executable, "-m", "seg.data.check", "--root", str(tmp_path), "--split", "train"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "masks/im0.png: mask values 4" in r.stdout and "masks/im1.png: mask values 4" in r.stdout


def test_classes_json_invalid(tmp_path):
    folder_tree(tmp_path, n=1)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DataError, match=r"classes\.json: invalid JSON"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "palette": [[1, 2, 3]]}))
    with pytest.raises(DataError, match=r"classes\.json: palette must hold 3"):
        FolderDataset(tmp_path, "train")


# --------------------------------------------------------------------------------------------------- structure


def _seg_data_imports() -> dict[str, set[str]]:
    """seg/data's modules, subpackages included ('transforms.geometric'; a package by its own name, seg/data's
    ``__init__`` as '__init__'), each with the seg.data modules it imports at any level: a lazy import inside a
    function, a command's ``main()`` included, is an edge too."""
    import ast

    import seg.data

    folder = Path(seg.data.__file__).parent

    def name(path: Path) -> str:
        parts = path.relative_to(folder).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"

    modules = {name(p): p for p in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = [] if module == "__init__" else module.split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y, from .. import x
                if node.level - 1 > len(package):
                    continue  # above seg.data
                target = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seg.data"):
                target = node.module.split(".")[2:]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[2:] for a in node.names if a.name.startswith("seg.data.")]
                found.update(".".join(t) for t in targets)
                continue
            else:
                continue
            for alias in node.names:  # `from . import png` imports a submodule, `from .base import X` its module
                sub = ".".join([*target, alias.name])
                found.add(sub if sub in modules else ".".join(target) or "__init__")
        graph[module] = found - {module}
    return graph


def test_seg_data_modules_import_each_other_without_cycles():
    """base.py <-> transforms.py imported each other (base lazily, for the reseed helper), and cache.py's command
    imported the data module, which imports base, which imported cache (lazily); a cycle makes the import order
    matter. The graph of seg/data's modules and subpackages (lazy imports included) must be acyclic."""
    import graphlib

    graph = _seg_data_imports()
    assert {"__init__", "base", "transforms", "transforms.geometric", "transforms.recipe", "seeding"} <= set(graph)
    assert "base" in graph["transforms.geometric"] and "transforms.geometric" in graph["transforms"]
    assert "cache" in graph["base"] and "datamodule" in graph["cache.__main__"]  # the command imports what it runs
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle in seg/data: {' -> '.join(e.args[1])}")
