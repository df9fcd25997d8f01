"""Generate tests/data/mmseg/resnet_v1c.pt: a tiny ImageNet-style ResNetV1c weight file in mmcv's key layout and
the features mmseg's own ``ResNetV1c`` computes after loading it the way every mmseg recipe does.

NOT part of the seg package and NOT run in CI: it imports mmsegmentation 1.x / mmengine / mmcv-lite (a dev venv,
as in scripts/make_mmseg_golden.py)::

    python -m venv --system-site-packages /tmp/mmenv
    /tmp/mmenv/bin/pip install mmsegmentation==1.2.2 mmengine "mmcv-lite==2.1.0" ftfy regex -c constraints.txt
    /tmp/mmenv/bin/python scripts/make_resnet_v1c_golden.py

mmseg's R50/R101-D8 recipes start from ``open-mmlab://resnet50_v1c`` / ``resnet101_v1c``: a bare state dict of
mmcv's ``ResNetV1c`` (``stem.{0,1,3,4,6,7}.*``, ``layer1..4.*``) plus its ImageNet classifier (``fc.*``), loaded
into the backbone with ``init_cfg=dict(type='Pretrained', checkpoint=...)``. This script writes such a file for a
tiny Bottleneck ResNetV1c (blocks (1, 1, 2, 2), base_channels 2, stem_channels 8; random weights AND BN
statistics), builds two fresh mmseg ``ResNetV1c`` from it through ``init_cfg`` + ``init_weights()`` -- the D8
recipe backbone (dilations (1, 1, 2, 4), strides (1, 2, 1, 1), contract_dilation) and the undilated one of
UPerNet -- and records their four feature maps in eval mode on a 1x3x49x65 input. ``tests/test_pretrained.py``
loads the same file through ``weights: open-mmlab`` and compares.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mmseg_golden import install_mmcv_ops_stub, pack, randomise  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "mmseg" / "resnet_v1c.pt"
TINY_BLOCKS = (1, 1, 2, 2)
# timm resnet50c with the same widths (timm's stem_width is half of mmseg's stem_channels)
SEG_BACKBONE_KWARGS = dict(layers=TINY_BLOCKS, channels=(2, 4, 8, 16), stem_width=4)


def backbone_cfg(dilated: bool, checkpoint: str | None = None) -> dict:
    cfg = dict(
        type="ResNetV1c",
        depth=26,  # registered below as the tiny Bottleneck ResNet
        base_channels=2,
        stem_channels=8,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    )
    if dilated:
        cfg.update(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1))
    if checkpoint is not None:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=checkpoint)
    return cfg


def main() -> None:
    install_mmcv_ops_stub()
    from mmseg.models.backbones.resnet import Bottleneck, ResNet
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    ResNet.arch_settings[26] = (Bottleneck, TINY_BLOCKS)
    gen = torch.Generator().manual_seed(21)
    source = MODELS.build(backbone_cfg(dilated=True))
    randomise(source, gen)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(10, 64, generator=gen)  # the ImageNet classifier (10 classes here)
    state["fc.bias"] = torch.randn(10, generator=gen)
    state = pack(state)
    x = torch.randn(1, 3, 49, 65, generator=gen)
    golden: dict = {"weights": state, "input": x, "seg_backbone_kwargs": SEG_BACKBONE_KWARGS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet26_v1c.pth"
        torch.save(state, path)
        for dilated, key in ((True, "features_d8"), (False, "features_d32")):
            model = MODELS.build(backbone_cfg(dilated, checkpoint=str(path)))
            model.init_weights()  # mmengine's Pretrained init: load_checkpoint(strict=False) into the backbone
            own = model.state_dict()
            assert all(torch.equal(own[k], state[k]) for k in own), "mmseg did not load every tensor"
            model.eval()
            with torch.no_grad():
                golden[key] = [f.clone() for f in model(x)]
            print(key, [tuple(f.shape) for f in golden[key]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(state)} tensors)")


if __name__ == "__main__":
    main()
