"""``weights: open-mmlab``: mmcv's ImageNet ResNetV1c file, downloaded (from a 127.0.0.1 server here), verified and
mapped onto timm's resnet50c, gives the features of mmseg's own ``ResNetV1c`` loaded from the same file.

tests/data/mmseg/resnet_v1c.pt comes from scripts/make_resnet_v1c_golden.py (mmsegmentation 1.2.2 in a dev venv):
a tiny ResNetV1c state dict in mmcv's key layout (with an ImageNet classifier ``fc``), and the four feature maps
mmseg's ``ResNetV1c`` computes after ``init_cfg=Pretrained`` loaded it, dilated (D8) and undilated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seg.models import build_model
from seg.models.backbone import TimmBackbone
from seg.models.download import DownloadError, file_hash
from seg.models.pretrained import OPEN_MMLAB_URLS, load_mmcv_resnet, mmcv_resnet_to_timm
from seg.models.safe_load import CheckpointError

GOLDEN = Path(__file__).parent / "data" / "mmseg" / "resnet_v1c.pt"


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


def hashed_file(folder: Path, weights: dict, stem: str = "resnet50_v1c") -> Path:
    """The weights saved as mmcv publishes them: ``<stem>-<first 8 hex digits of the SHA-256>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(weights, tmp)
    path = folder / f"{stem}-{file_hash(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


def test_every_key_is_mapped_and_used(golden):
    mapped = mmcv_resnet_to_timm(golden["weights"])
    body = TimmBackbone("resnet50c", model_kwargs=golden["seg_backbone_kwargs"]).body
    own = body.state_dict()
    assert set(mapped) == set(own)  # none missing, none unused
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert len(mapped) == len(golden["weights"]) - 2  # everything but the ImageNet classifier fc.weight / fc.bias


@pytest.mark.parametrize("stride,key", [(8, "features_d8"), (32, "features_d32")])
def test_open_mmlab_weights_give_mmseg_features(golden, stride, key, tmp_path, hub_server, monkeypatch):
    """Through the user-facing value: build_model(weights='open-mmlab') downloads, verifies and maps the file."""
    hashed_file(hub_server.root, golden["weights"])
    name = next(p.name for p in hub_server.root.glob("resnet50_v1c-*.pth"))
    monkeypatch.setitem(OPEN_MMLAB_URLS, "resnet50c", f"https://download.openmmlab.com/pretrain/third_party/{name}")
    model = build_model(
        "resnet50c", "fcn", 3, weights="open-mmlab", output_stride=stride, backbone_kwargs=golden["seg_backbone_kwargs"]
    ).eval()
    with torch.no_grad():
        feats = model.backbone(golden["input"])
    for ours, ref in zip(feats, golden[key], strict=True):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (hub_server.cache / name).is_file()


def test_wrong_weights_do_not_give_mmseg_features(golden, tmp_path):
    """The comparison above has teeth: one BN statistic changed moves the features."""
    weights = dict(golden["weights"])
    weights["layer4.1.bn3.running_mean"] = weights["layer4.1.bn3.running_mean"] + 1.0
    body = TimmBackbone("resnet50c", model_kwargs=golden["seg_backbone_kwargs"]).body.eval()
    load_mmcv_resnet(body, hashed_file(tmp_path, weights))
    with torch.no_grad():
        last = body(golden["input"])[-1]
    assert not torch.allclose(last, golden["features_d8"][-1], atol=1e-3)


def test_missing_or_foreign_keys_are_errors(golden, tmp_path):
    body = TimmBackbone("resnet50c", model_kwargs=golden["seg_backbone_kwargs"]).body
    weights = dict(golden["weights"])
    del weights["layer2.0.downsample.1.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys.*layer2\.0\.downsample\.1\.weight"):
        load_mmcv_resnet(body, hashed_file(tmp_path / "a", weights))
    wide = TimmBackbone("resnet50c", model_kwargs={**golden["seg_backbone_kwargs"], "stem_width": 8}).body
    with pytest.raises(CheckpointError, match="(?s)shape mismatches.*resnet50c / resnet101c"):
        load_mmcv_resnet(wide, hashed_file(tmp_path / "b", golden["weights"]))


def test_open_mmlab_is_for_resnet_v1c_only():
    with pytest.raises(ValueError, match="resnet50c or resnet101c"):
        build_model("resnet18", "fcn", 3, weights="open-mmlab")


def test_open_mmlab_offline_says_how(monkeypatch, hub_server):
    monkeypatch.setenv("SEG_ZOO_URL_PREFIX", hub_server.dead_url)
    with pytest.raises(DownloadError, match=r"(?s)resnet101_v1c-e67eebb6\.pth.*offline.*curl -L.*wget"):
        build_model("resnet101c", "fcn", 19, weights="open-mmlab")


def test_recipe_configs_start_from_open_mmlab():
    """Every Cityscapes / ADE20K recipe on ResNetV1c starts where mmseg's does."""
    import yaml

    root = Path(__file__).parents[1] / "configs"
    recipes = [
        p
        for p in [*root.glob("*.yaml"), *root.glob("ade20k/*.yaml")]
        if p.stem not in ("quickstart", "custom", "custom_cpu")
    ]
    assert len(recipes) >= 30
    for path in recipes:
        model = yaml.safe_load(path.read_text())["model"]
        assert model["backbone"] in OPEN_MMLAB_URLS and model["weights"] == "open-mmlab", path
