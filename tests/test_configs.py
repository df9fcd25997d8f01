"""Every config parses through train.py's CLI and instantiates its model, data module and trainer.

Cityscapes/ADE20K data is not present here: their data modules are constructed (classes, transforms) without
touching the splits, and ImageNet weights (a download) are replaced by random init. The recipe values that the
issue pins (crops, iterations, images per iteration, optimiser) are checked against the files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seg.data.synthetic import write_demo
from seg.models import HEADS
from seg.training.cli import SegCLI

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# Where a head's mmseg recipe differs from the R50-D8 one (ResNetV1c-50, output stride 8, 8 / 16 images per
# iteration, lr 0.01 -> 1e-4): OCRNet is published as R101-D8 with 16 Cityscapes images at lr 0.02 -> 2e-4,
# UPerNet on the undilated ResNet.
RECIPE = {
    "backbone": "resnet50c",
    "output_stride": 8,
    "images": {"cityscapes": 8, "ade20k": 16},
    "lr": 0.01,
    "min_lr": 1e-4,
}
RECIPE_CHANGES = {
    ("ocr", "cityscapes"): {"backbone": "resnet101c", "images": {"cityscapes": 16}, "lr": 0.02, "min_lr": 2e-4},
    ("ocr", "ade20k"): {"backbone": "resnet101c"},
    ("uper", "cityscapes"): {"output_stride": 32},
    ("uper", "ade20k"): {"output_stride": 32},
}


def test_every_recipe_exists():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    for head in HEADS:  # every registered head has both recipes
        assert f"{head}.yaml" in names and f"ade20k/{head}.yaml" in names
    assert {"custom.yaml", "quickstart.yaml"} <= names


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cfg") / "data"
    write_demo(root, splits={"train": 2, "val": 1}, size=32)
    return root


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_instantiates(config, folder_root, tmp_path):
    raw = yaml.safe_load(config.read_text())
    args = [
        "--config",
        str(config),
        "--wandb=off",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.weights=null",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]
    if raw["data"]["dataset"] == "folder":
        args += [f"--data.root={folder_root}", "--data.generate_demo=false"]
    cli = SegCLI(args=args)
    model, dm = cli.model, cli.datamodule
    assert model.hparams.head == raw["model"]["head"]
    assert (
        model.hparams.num_classes
        == dm.num_classes
        == {"cityscapes": 19, "ade20k": 150, "folder": 5}[raw["data"]["dataset"]]
    )
    assert model.model.head is not None and (model.model.aux_head is not None) == raw["model"]["aux"]
    assert cli.trainer.max_steps == raw["trainer"]["max_steps"]
    assert Path(cli.trainer.default_root_dir) == tmp_path
    if raw["data"]["dataset"] in ("cityscapes", "ade20k"):  # the mmseg recipes
        dataset = raw["data"]["dataset"]
        city = dataset == "cityscapes"
        recipe = dict(RECIPE, **RECIPE_CHANGES.get((raw["model"]["head"], dataset), {}))
        assert model.hparams.backbone == recipe["backbone"] and model.hparams.output_stride == recipe["output_stride"]
        assert model.model.backbone.reductions[-1] == recipe["output_stride"]
        assert tuple(dm.crop_size) == ((512, 1024) if city else (512, 512))
        assert cli.trainer.max_steps == (80_000 if city else 160_000)
        assert dm.batch_size * cli.trainer.num_devices == dict(RECIPE["images"], **recipe["images"])[dataset]
        hp = model.hparams
        assert (hp.lr, hp.momentum, hp.weight_decay, hp.power, hp.min_lr, hp.aux_weight) == (
            recipe["lr"],
            0.9,
            5e-4,
            0.9,
            recipe["min_lr"],
            0.4,
        )
        # mmseg's loss normalisation (CrossEntropyLoss default) and test pipeline: images fit the test scale
        # (identity for 2048x1024 Cityscapes), the ground truth is scored at its original size
        assert hp.avg_non_ignore is False and model.criterion.avg_non_ignore is False
        assert tuple(dm.scale) == ((1024, 2048) if city else (512, 2048))
        assert dm.hparams.val_mode == ("full" if city else "resize")
