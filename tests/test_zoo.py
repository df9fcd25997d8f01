"""The model zoo by name: the committed table, and ``mmseg:<name>`` / URL checkpoints served by a 127.0.0.1
``http.server`` (tests/hub_server.py) -- never the internet.

The tiny published checkpoint is tests/data/mmseg/fcn.pth (mmseg's layout, from scripts/make_mmseg_golden.py) with
150-class classifiers, added to the table as one more row; the converted model is compared with the direct
conversion of the same file (``load_mmseg_checkpoint``), whose logits tests/test_mmseg_compat.py checks against
mmseg's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import seg.zoo.table as zoo_table
from seg.data import ADE20KDataset
from seg.loading import load_model, read_info
from seg.models import HEADS, build_model, get_head, load_mmseg_checkpoint
from seg.models.download import DownloadError, file_hash, hash_prefix
from seg.models.pretrained import OPEN_MMLAB_URLS
from seg.zoo.hub import converted_path
from seg.zoo.table import UnknownModelError, rows

DATA = Path(__file__).parent / "data" / "mmseg"
TINY_NAME = "fcn_tiny-d8_4xb4-80k_ade20k-512x512"


# ---------------------------------------------------------------------------------------------- the committed table
# Facts of mmsegmentation 1.2.2's metafiles, counted with a plain yaml read of the wheel (independently of
# scripts/make_zoo_table.py): models listed per head, and the R50/R101 Cityscapes-512x1024 / ADE20K-512x512 names
# (105: the table's 104 and one deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512 listed twice, once with the 80k
# schedule's weights, which the script leaves out).
METAFILE_MODELS = {"fcn": 41, "psp": 54, "aspp": 41, "sep_aspp": 43, "ccnet": 16, "danet": 16, "nonlocal": 16,
                   "gc": 16, "ema": 4, "isa": 16, "dnl": 12, "ann": 16, "ocr": 24, "uper": 16}  # fmt: skip
R50_R101_CITYSCAPES_ADE20K_NAMES = 105


def test_table_matches_the_metafile_facts():
    table = json.loads(zoo_table.TABLE.read_text())
    published = table["rows"]
    assert table["listed_per_head"] == METAFILE_MODELS
    assert table["count"] == R50_R101_CITYSCAPES_ADE20K_NAMES - 1
    assert table["count"] == len(published) == sum(table["kept_per_head"].values())  # written by the script
    assert all(table["kept_per_head"][h] <= table["listed_per_head"][h] for h in table["listed_per_head"])
    names = [r["name"] for r in published]
    assert len(set(names)) == len(names)
    assert len({r["url"] for r in published}) == len(published)
    for r in published:
        assert r["url"].startswith("https://download.openmmlab.com/mmsegmentation/"), r
        assert hash_prefix(r["url"].rsplit("/", 1)[-1]) is not None, r["url"]  # an 8+ hex SHA-256 prefix
        assert (
            r["dataset"] in ("cityscapes", "ade20k")
            and r["num_classes"] == {"cityscapes": 19, "ade20k": 150}[r["dataset"]]
        )
        assert r["backbone"] in OPEN_MMLAB_URLS and r["output_stride"] == get_head(r["head"]).recipe_output_stride
        assert len(r["crop_size"]) == 2 and r["iters"] > 0 and f"-{r['iters'] // 1000}k_" in r["name"]
        assert r["mIoU"] is None or 20 < r["mIoU"] < 90
    # every head with an mmseg counterpart has published checkpoints seg builds
    assert (
        {r["head"] for r in published} == {h for h in table["kept_per_head"]} == {h for h in HEADS if get_head(h).mmseg}
    )


def test_every_table_architecture_builds():
    """Each distinct head / stride / class count at full widths (shallow ResNetV1c) and both backbones, on the
    meta device (no memory, no init cost)."""
    combos = {(r["head"], r["output_stride"], r["num_classes"]) for r in rows()}
    with torch.device("meta"):
        for head, stride, classes in sorted(combos):
            model = build_model(
                "resnet50c", head, classes, weights=None, output_stride=stride, backbone_kwargs={"layers": (1, 1, 1, 1)}
            )
            assert model.head.conv_seg.out_channels == classes
        for backbone in {r["backbone"] for r in rows()}:
            build_model(backbone, "fcn", 19, weights=None)


def test_list_command(capsys):
    from seg.zoo.__main__ import main

    assert main(["list", "--head", "danet", "--dataset", "cityscapes"]) == 0
    out = capsys.readouterr().out
    assert "danet_r50-d8_4xb2-40k_cityscapes-512x1024" in out and "78.74" in out and "ade20k" not in out
    assert len(re.findall(r"^danet_", out, re.M)) == len(rows("danet", "cityscapes")) == 4
    assert main(["list", "--head", "dant"]) == 2 and "Did you mean danet" in capsys.readouterr().err


def test_unknown_name_lists_close_ones(capsys):
    with pytest.raises(
        UnknownModelError,
        match=r"(?s)Close names: mmseg:danet_r50-d8_4xb2-40k_cityscapes-512x1024.*"
        r"python -m seg.zoo list",
    ):
        load_model("mmseg:danet_r50-d8_4xb2-40k_cityscape-512x1024")
    from seg.export import main as export

    with pytest.raises(SystemExit) as stop:
        export(["--ckpt", "mmseg:danet_r50", "--out", "x.pt", "--format", "torchscript"])
    assert stop.value.code == 2  # a usage error: two lines, no traceback
    assert re.search(r"mmseg:danet_r50 is not.*Close names: mmseg:danet_r50-d8_", capsys.readouterr().err)


# --------------------------------------------------------------------------------------- a tiny published checkpoint
@pytest.fixture
def tiny_zoo(hub_server, monkeypatch):
    """fcn.pth with 150-class classifiers, served as a published file, and its row in the table."""
    state = torch.load(DATA / "fcn.pth", weights_only=False)["state_dict"]
    gen = torch.Generator().manual_seed(0)
    for key in [k for k in state if "conv_seg" in k]:
        state[key] = torch.randn((150, *state[key].shape[1:]), generator=gen) * 0.5
    tmp = hub_server.root / "tmp.pth"
    torch.save({"state_dict": state, "meta": {"iter": 80000}}, tmp)
    file = hub_server.root / f"fcn_tiny_512x512_80k_ade20k_20200101_000000-{file_hash(tmp)[:8]}.pth"
    tmp.rename(file)
    golden = torch.load(DATA / "golden.pt", weights_only=True)
    build = {k: v for k, v in golden["seg_kwargs"].items() if k not in ("backbone", "num_classes")}
    row = {
        "name": TINY_NAME,
        "head": "fcn",
        "backbone": "resnet50c",
        "output_stride": 8,
        "num_classes": 150,
        "dataset": "ade20k",
        "crop_size": [512, 512],
        "iters": 80000,
        "eval": {"mode": "whole"},
        "url": f"https://download.openmmlab.com/mmsegmentation/v0.5/fcn/fcn_tiny/{file.name}",
        "mIoU": None,
        "mIoU_ms_flip": None,
        "build": build,
    }
    table = json.loads(zoo_table.TABLE.read_text())
    table["rows"].append(row)
    monkeypatch.setattr(zoo_table, "_table", lambda: table)
    hub_server.file, hub_server.row, hub_server.golden = file, row, golden
    return hub_server


def test_mmseg_name_downloads_converts_and_caches(tiny_zoo):
    info = read_info(f"mmseg:{TINY_NAME}")  # what every tool reads first (--ckpt)
    assert info.classes == list(ADE20KDataset.CLASSES) and info.palette == [tuple(c) for c in ADE20KDataset.PALETTE]
    assert info.dataset == "ade20k" and info.eval["mode"] == "whole" and info.test_scale == (512, 2048)
    model, info2 = load_model(f"mmseg:{TINY_NAME}")
    assert len(tiny_zoo.requests) == 1  # downloaded once; the second load read the converted cache
    assert info2.path == converted_path(tiny_zoo.row["url"]) and info2.path.parent == tiny_zoo.cache
    assert (tiny_zoo.cache / tiny_zoo.file.name).read_bytes() == tiny_zoo.file.read_bytes()
    assert not list(tiny_zoo.cache.glob("*.part"))
    reference = load_mmseg_checkpoint(
        tiny_zoo.file, "fcn", **{**tiny_zoo.row["build"], "backbone": "resnet50c", "num_classes": 150}
    )
    x = tiny_zoo.golden["input"]
    with torch.no_grad():
        assert torch.equal(model(x)["out"], reference(x)["out"])
    # the URL of the published file (on any mirror) resolves to the same cached conversion, without a download
    model3, info3 = load_model(f"{tiny_zoo.url}/{tiny_zoo.file.name}")
    assert info3.path == info2.path and len(tiny_zoo.requests) == 1
    from seg.evaluate import default_output
    from seg.zoo.__main__ import main as zoo

    assert zoo(["fetch", TINY_NAME]) == 0 and len(tiny_zoo.requests) == 1
    assert default_output(f"mmseg:{TINY_NAME}") == Path("metrics.json")  # not inside the torch cache


def test_parallel_loads_download_and_convert_once(tiny_zoo):
    """DDP ranks starting together: a file lock makes the others wait for the first download and conversion."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        infos = [info for _, info in pool.map(load_model, [f"mmseg:{TINY_NAME}"] * 3)]
    assert len(tiny_zoo.requests) == 1 and len({i.path for i in infos}) == 1


def test_hash_mismatch_deletes_the_file(tiny_zoo):
    wrong = tiny_zoo.file.with_name(tiny_zoo.file.name.rsplit("-", 1)[0] + "-0badc0de.pth")
    tiny_zoo.file.rename(wrong)
    with pytest.raises(DownloadError, match=r"(?s)SHA-256 mismatch.*0badc0de.*was deleted"):
        load_model(f"{tiny_zoo.url}/{wrong.name}")
    assert not [p for p in tiny_zoo.cache.iterdir() if p.suffix != ".lock"]


def test_truncated_download_is_kept_and_resumed(tiny_zoo):
    tiny_zoo.truncate_to = 1000
    size = tiny_zoo.file.stat().st_size
    with pytest.raises(DownloadError, match=rf"cut short: 1000 of {size} bytes.*is kept"):
        load_model(f"mmseg:{TINY_NAME}")
    part = tiny_zoo.cache / f"{tiny_zoo.file.name}.part"
    assert part.stat().st_size == 1000 and not (tiny_zoo.cache / tiny_zoo.file.name).exists()
    tiny_zoo.truncate_to = None
    model, info = load_model(f"mmseg:{TINY_NAME}")
    assert tiny_zoo.requests[-1][1] == "bytes=1000-"  # resumed where it broke off
    assert (tiny_zoo.cache / tiny_zoo.file.name).read_bytes() == tiny_zoo.file.read_bytes() and not part.exists()


def test_resume_without_range_support_starts_again(tiny_zoo):
    part = tiny_zoo.cache / f"{tiny_zoo.file.name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage")
    tiny_zoo.ranges = False
    load_model(f"mmseg:{TINY_NAME}")
    assert (tiny_zoo.cache / tiny_zoo.file.name).read_bytes() == tiny_zoo.file.read_bytes()


def test_offline_error_says_how_to_get_the_file(tiny_zoo, monkeypatch):
    monkeypatch.setenv("SEG_ZOO_URL_PREFIX", tiny_zoo.dead_url)
    with pytest.raises(DownloadError) as err:
        load_model(f"mmseg:{TINY_NAME}")
    msg = str(err.value)
    assert f"{tiny_zoo.dead_url}/{tiny_zoo.file.name}" in msg and "offline" in msg
    assert f"curl -L -C - -o {tiny_zoo.cache / tiny_zoo.file.name}" in msg and "wget -c -O" in msg
    assert "python -m seg.convert mmseg" in msg and "--head fcn --backbone resnet50c --num_classes 150" in msg
    # what the message says: the file copied by hand to the cache path is verified, converted and used, offline
    (tiny_zoo.cache / tiny_zoo.file.name).write_bytes(tiny_zoo.file.read_bytes())
    model, info = load_model(f"mmseg:{TINY_NAME}")
    assert info.dataset == "ade20k" and not tiny_zoo.requests


def test_seg_checkpoint_url(hub_server, tmp_path):
    from seg.models.checkpoint import save_checkpoint

    net = build_model(
        "resnet18",
        "fcn",
        3,
        weights=None,
        channels=8,
        aux=False,
        backbone_kwargs={"layers": (1, 1, 1, 1), "channels": (4, 8, 16, 32)},
    )
    tmp = save_checkpoint(net, hub_server.root / "x.ckpt")
    named = tmp.rename(hub_server.root / f"tiny-{file_hash(tmp)[:8]}.ckpt")
    model, info = load_model(f"{hub_server.url}/{named.name}")
    assert info.path == hub_server.cache / named.name and info.num_classes == 3
    torch.testing.assert_close(model.state_dict(), net.state_dict())
    with pytest.raises(DownloadError, match="HTTP 404"):
        load_model(f"{hub_server.url}/missing.ckpt")
    # a name without a hash is cached per URL: another run's best.ckpt is another file (the test server serves
    # by file name, so the root's best.ckpt is each run's in turn)
    infos = []
    for run, classes in (("run0", 3), ("run1", 4)):
        save_checkpoint(build_model(**dict(net.build_args, num_classes=classes)), hub_server.root / "best.ckpt")
        infos.append(load_model(f"{hub_server.url}/{run}/best.ckpt")[1])
    first, second = infos
    assert (first.num_classes, second.num_classes) == (3, 4) and first.path != second.path


def test_init_from_and_predict_take_mmseg_names(tiny_zoo, tmp_path):
    """``model.init_from=mmseg:<name>`` (what train.py's module does) and ``seg.predict --ckpt mmseg:<name>``."""
    from PIL import Image

    from seg.predict import main as predict
    from seg.training.module import load_matching_weights

    net = build_model("resnet50c", "fcn", 2, weights=None, **tiny_zoo.row["build"])
    report = load_matching_weights(net, f"mmseg:{TINY_NAME}")
    assert report["loaded"] and {k.split(".")[0] for k in report["shape_mismatch"]} <= {"head", "aux_head"}
    image = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "street.png")
    masks = predict(
        [
            "--ckpt",
            f"mmseg:{TINY_NAME}",
            str(tmp_path / "street.png"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert len(masks) == 1
    mask = np.array(Image.open(tmp_path / "out" / "street.png"))
    color = np.array(Image.open(tmp_path / "out" / "street_color.png").convert("RGB"))
    assert mask.shape == (24, 40)
    palette = np.array(ADE20KDataset.PALETTE, dtype=np.uint8)
    assert np.array_equal(color, palette[mask])  # the data set's colours came with the checkpoint
    # the Python API takes the same name: seg.predict's mask, the data set's classes
    import seg

    model = seg.load(f"mmseg:{TINY_NAME}", device="cpu")
    assert np.array_equal(model.predict(str(tmp_path / "street.png")), mask)
    assert model.classes == list(ADE20KDataset.CLASSES)
    assert len(tiny_zoo.requests) == 1


def test_train_init_from_mmseg_name(tiny_zoo, tiny_data, tmp_path):
    """``python train.py --config ... --model.init_from=mmseg:<name>`` (in process): the backbone and the head's
    body start from the published file, the 5-class classifiers afresh."""
    import yaml
    from helpers import tiny_config

    from seg.training.cli import main as train

    config = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=2, val_check_interval=2)
    cfg = yaml.safe_load(config.read_text())
    build = tiny_zoo.row["build"]
    cfg["model"].update(
        backbone="resnet50c",
        backbone_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in build["backbone_kwargs"].items()},
        head_kwargs={"channels": build["channels"]},
    )
    config.write_text(yaml.safe_dump(cfg))
    cli = train(["--config", str(config), f"--model.init_from=mmseg:{TINY_NAME}"])
    report = cli.model.init_report
    backbone = [k for k in cli.model.model.state_dict() if k.startswith("backbone.")]
    assert set(backbone) <= set(report["loaded"]) and "head.convs.0.conv.weight" in report["loaded"]
    assert {k.split()[0] for k in report["shape_mismatch"]} >= {"head.conv_seg.weight", "head.conv_seg.bias"}
    assert len(tiny_zoo.requests) == 1


def test_the_manual_convert_command_parses_with_seg_convert(capsys):
    """The offline error's ``seg.convert`` command is spelt as the command takes it (no renamed-flag notes)."""
    import shlex

    from seg.convert import build_parser
    from seg.zoo.hub import _convert_command

    row = next(r for r in zoo_table._table()["rows"] if r["head"] == "uper")
    words = shlex.split(_convert_command(row, Path("/tmp/x.pth")))
    assert words[:3] == ["python", "-m", "seg.convert"]
    ns = build_parser().parse_args(words[3:])
    assert (ns.head, ns.backbone, ns.num_classes, ns.output_stride, ns.dataset) == (
        "uper",
        row["backbone"],
        row["num_classes"],
        row["output_stride"],
        row["dataset"],
    )
    assert capsys.readouterr().err == ""
