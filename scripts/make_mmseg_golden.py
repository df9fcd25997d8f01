"""Generate the small mmsegmentation golden files in tests/data/mmseg/ (and R50-D8 parameter counts).

NOT part of the seg package and NOT run in CI: it imports mmsegmentation 1.x / mmengine / mmcv-lite,
which seg never depends on. Run it in a separate virtual environment, e.g.:

    python -m venv --system-site-packages /tmp/mmenv
    /tmp/mmenv/bin/pip install mmsegmentation mmengine "mmcv-lite==2.1.0" ftfy regex
    /tmp/mmenv/bin/python scripts/make_mmseg_golden.py            # writes tests/data/mmseg/
    /tmp/mmenv/bin/python scripts/make_mmseg_golden.py --counts   # prints R50-D8 head parameter counts

(mmseg 1.2.2 refuses mmcv >= 2.2.) mmcv-lite has no compiled ops, so ``mmcv.ops`` cannot be imported;
we register a stub ``mmcv.ops`` whose only real member is ``CrissCrossAttention``, loaded from
mmcv's pure-PyTorch ``mmcv/ops/cc_attention.py``. Every other name is a placeholder that fails if used.

For each of FCN, CCNet, DANet and Non-local it builds an mmseg ``EncoderDecoder`` that is
architecturally the R50-D8 config (``configs/_base_/models/*_r50-d8.py``: ResNetV1c, dilations
(1, 1, 2, 4), strides (1, 2, 1, 1), contract_dilation, decode head on stage 4, FCN aux head on
stage 3) but tiny (Bottleneck blocks (1, 1, 2, 2), base_channels 2, stem_channels 8, head
channels 8, aux channels 4, pam_channels 4, 3 classes). All parameters and BN statistics are randomised (including
the zero-initialised attention gammas and the Non-local output norm) so that every branch counts.
It saves, per head, ``<head>.pth`` = ``{'state_dict': mmseg state dict, 'meta': ...}`` (the layout
of mmseg's published checkpoints), and ``golden.pt`` holds the shared input plus, per head, mmseg's
``encode_decode`` logits, the aux-head logits and (DANet) the pam/cam logits in eval mode.

The model zoo heads (``ZOO_HEADS``: PSP, ASPP, DeepLabV3+, GC, EMA, ISA, DNL, ANN, OCR, UPerNet) go into
one file, ``zoo.pt``, to stay small: every zoo model shares one random backbone (stored once; a test
joins it with a head's keys into an mmseg checkpoint), and the golden outputs are at feature resolution
(mmseg's ``decode_head.forward``; this script asserts that ``encode_decode`` is exactly its bilinear resize
to the input, so the test checks both). Their configs are the recipes of ``configs/_base_/models/``
(``zoo_cfg``) at the tiny widths; UPerNet's backbone is undilated (output stride 32), OCRNet is a
``CascadeEncoderDecoder`` (FCN on stage 3 -> OCRHead on stage 4). Dilations (ASPP) and the ISA down
factor are scaled down with the 7x9 feature map so every tap and the padding are exercised, and GCNet's
ratio is 1/2 so its LayerNorm'd context transform is 4 wide. For EMANet it
also records the bases after one train-mode step of the head (the momentum update).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "mmseg"
HEADS = ("fcn", "ccnet", "danet", "nonlocal")
ZOO_HEADS = ("psp", "aspp", "sep_aspp", "gc", "ema", "isa", "dnl", "ann", "ocr", "uper")
NUM_CLASSES = 3
INPUT_SHAPE = (1, 3, 49, 65)  # odd sizes catch interpolation / padding bugs

# Tiny R50-D8 twin. The seg side of each entry is what tests/test_mmseg_compat.py passes to
# seg.models.load_mmseg_checkpoint: timm resnet50c with the same widths (timm stem_width is half of
# mmseg's stem_channels: timm's deep stem ends with 2 * stem_width channels).
TINY_BLOCKS = (1, 1, 2, 2)
SEG_KWARGS = dict(
    backbone="resnet50c",
    num_classes=NUM_CLASSES,
    backbone_kwargs=dict(layers=TINY_BLOCKS, channels=(2, 4, 8, 16), stem_width=4),
    aux_channels=4,
    channels=8,
)
SEG_HEAD_KWARGS = {"fcn": {}, "ccnet": {}, "danet": {"pam_channels": 4}, "nonlocal": {}}
TINY_DILATIONS = (1, 2, 3, 5)  # recipe (1, 12, 24, 36) on a 64x128 map; 12+ would only hit padding on 7x9
ZOO_SEG_KWARGS_COMMON = dict(SEG_KWARGS, backbone_kwargs=dict(layers=TINY_BLOCKS, channels=(1, 2, 4, 8), stem_width=4))
# seg build_model kwargs of the zoo heads on top of ZOO_SEG_KWARGS_COMMON (the tiny twins of zoo_cfg(tiny=True))
ZOO_SEG_KWARGS = {
    "psp": {"channels": 4},
    "aspp": {"channels": 4, "dilations": TINY_DILATIONS},
    "sep_aspp": {"channels": 4, "dilations": TINY_DILATIONS, "c1_channels": 4},
    "gc": {"channels": 8, "ratio": 1 / 2},  # recipe 1/4 would make the LayerNorm'd transform 2 wide
    "ema": {"channels": 8, "ema_channels": 8, "num_bases": 4},
    "isa": {"channels": 8, "isa_channels": 4, "down_factor": (3, 4)},
    "dnl": {"channels": 8},
    "ann": {"channels": 4, "project_channels": 4},
    "ocr": {"channels": 8, "ocr_channels": 4},
    "uper": {"channels": 4, "output_stride": 32},
}


def install_mmcv_ops_stub() -> None:
    import mmcv

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("compiled mmcv op stubbed out by make_mmseg_golden.py")

    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = []  # a package, so submodules can be registered below it

    def __getattr__(name: str):  # PEP 562 module __getattr__: placeholders for the compiled ops
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing

    ops.__getattr__ = __getattr__
    ops.__file__ = __file__
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    path = Path(mmcv.__file__).parent / "ops" / "cc_attention.py"
    spec = importlib.util.spec_from_file_location("mmcv.ops.cc_attention", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mmcv.ops.cc_attention"] = module
    spec.loader.exec_module(module)
    ops.CrissCrossAttention = module.CrissCrossAttention


def mmseg_cfg(head: str, num_classes: int, tiny: bool) -> dict:
    norm_cfg = dict(type="BN", requires_grad=True)
    if tiny:
        backbone = dict(type="ResNetV1c", depth=26, base_channels=2, stem_channels=8)
        in4, in3, ch, aux_ch, pam = 64, 32, 8, 4, 4
    else:
        backbone = dict(type="ResNetV1c", depth=50)
        in4, in3, ch, aux_ch, pam = 2048, 1024, 512, 256, 64
    backbone.update(
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    )
    common = dict(
        in_channels=in4,
        in_index=3,
        channels=ch,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
    )
    decode = {
        "fcn": dict(type="FCNHead", num_convs=2, concat_input=True, **common),
        "ccnet": dict(type="CCHead", recurrence=2, concat_input=True, **common),
        "danet": dict(type="DAHead", pam_channels=pam, **common),
        "nonlocal": dict(
            type="NLHead", reduction=2, use_scale=True, mode="embedded_gaussian", concat_input=True, **common
        ),
    }[head]
    aux = dict(
        type="FCNHead",
        in_channels=in3,
        in_index=2,
        channels=aux_ch,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
    )
    return dict(
        type="EncoderDecoder",
        backbone=backbone,
        decode_head=decode,
        auxiliary_head=aux,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def zoo_cfg(head: str, num_classes: int, tiny: bool) -> dict:
    """mmseg config of a zoo head: configs/_base_/models/<recipe>.py, optionally at the tiny widths."""
    norm_cfg = dict(type="BN", requires_grad=True)
    if tiny:  # half the width of the other golden models' backbone: stages 4, 8, 16, 32 channels
        backbone = dict(type="ResNetV1c", depth=26, base_channels=1, stem_channels=8)
        c1, c2, c3, c4, aux_ch = 4, 8, 16, 32, 4
        dil, c1_ch, ema, bases, isa, isa_down, proj, ocr = TINY_DILATIONS, 4, 8, 4, 4, (3, 4), 4, 4
    else:
        backbone = dict(type="ResNetV1c", depth=50)
        c1, c2, c3, c4, ch, aux_ch = 256, 512, 1024, 2048, 512, 256
        dil, c1_ch, ema, bases, isa, isa_down, proj, ocr = (1, 12, 24, 36), 48, 512, 64, 256, (8, 8), 256, 256
    if head == "uper":  # upernet_r50: undilated
        backbone.update(dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2))
    else:
        backbone.update(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1))
    backbone.update(
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    )
    if tiny:
        ch = ZOO_SEG_KWARGS[head]["channels"]
    common = dict(
        in_channels=c4,
        in_index=3,
        channels=ch,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
    )
    fcn = dict(
        type="FCNHead",
        in_channels=c3,
        in_index=2,
        channels=aux_ch,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
    )
    if head == "ocr":  # ocrnet_r50-d8: a two-stage cascade, no auxiliary head
        decode = [fcn, dict(type="OCRHead", ocr_channels=ocr, **common)]
        return dict(
            type="CascadeEncoderDecoder",
            num_stages=2,
            backbone=backbone,
            decode_head=decode,
            train_cfg=dict(),
            test_cfg=dict(mode="whole"),
        )
    decode = {
        "psp": lambda: dict(type="PSPHead", pool_scales=(1, 2, 3, 6), **common),
        "aspp": lambda: dict(type="ASPPHead", dilations=dil, **common),
        "sep_aspp": lambda: dict(
            type="DepthwiseSeparableASPPHead", dilations=dil, c1_in_channels=c1, c1_channels=c1_ch, **common
        ),
        "gc": lambda: dict(
            type="GCHead", ratio=1 / 2 if tiny else 1 / 4, pooling_type="att", fusion_types=("channel_add",), **common
        ),
        "ema": lambda: dict(
            type="EMAHead",
            ema_channels=ema,
            num_bases=bases,
            num_stages=3,
            momentum=0.1,
            **dict(common, channels=common["channels"] if tiny else 256),
        ),
        "isa": lambda: dict(type="ISAHead", isa_channels=isa, down_factor=isa_down, **common),
        "dnl": lambda: dict(type="DNLHead", reduction=2, use_scale=True, mode="embedded_gaussian", **common),
        "ann": lambda: dict(
            type="ANNHead",
            project_channels=proj,
            query_scales=(1,),
            key_pool_scales=(1, 3, 6, 8),
            **dict(common, in_channels=[c3, c4], in_index=[2, 3]),
        ),
        "uper": lambda: dict(
            type="UPerHead",
            pool_scales=(1, 2, 3, 6),
            **dict(common, in_channels=[c1, c2, c3, c4], in_index=[0, 1, 2, 3]),
        ),
    }[head]()
    return dict(
        type="EncoderDecoder",
        backbone=backbone,
        decode_head=decode,
        auxiliary_head=fcn,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def build(cfg: dict):
    from mmseg.registry import MODELS

    return MODELS.build(cfg)


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights AND statistics, so zero-initialised branches (gammas, NL norm) are exercised."""
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        elif t.ndim == 1 and ("bn" in name or ".stem." in name or "gamma" in name):
            # BN weight/bias, Scale gammas: weight-like in [0.5, 1.5), bias-like small.
            t.copy_(
                torch.rand(t.shape, generator=gen) + 0.5
                if name.endswith(("weight", "scale"))
                else torch.randn(t.shape, generator=gen) * 0.1
            )
        else:
            fan_in = t[0].numel() if t.ndim > 1 else 1
            t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)


def make_golden() -> None:
    from mmseg.models.backbones.resnet import Bottleneck, ResNet

    ResNet.arch_settings[26] = (Bottleneck, TINY_BLOCKS)  # a tiny Bottleneck ResNet, not an mmseg depth
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(INPUT_SHAPE, generator=gen)
    golden: dict = {"input": x, "seg_kwargs": SEG_KWARGS, "heads": {}}
    metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:]))]
    for head in HEADS:
        model = build(mmseg_cfg(head, NUM_CLASSES, tiny=True))
        randomise(model, gen)
        model.eval()
        with torch.no_grad():
            logits = model.encode_decode(x, metas)
            feats = model.extract_feat(x)
            aux = model.auxiliary_head(feats)
            extra = {}
            if head == "danet":
                _, pam, cam = model.decode_head(feats)
                extra = {"pam": pam, "cam": cam}
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(
            {
                "state_dict": state,
                "meta": {
                    "generator": "scripts/make_mmseg_golden.py",
                    "mmseg_cfg": mmseg_cfg(head, NUM_CLASSES, tiny=True),
                },
            },
            OUT / f"{head}.pth",
        )
        golden["heads"][head] = {"logits": logits, "aux": aux, "head_kwargs": SEG_HEAD_KWARGS[head], **extra}
        print(
            f"{head}: logits {tuple(logits.shape)} |max| {logits.abs().max():.3f}, "
            f"{sum(v.numel() for v in state.values())} state values"
        )
    torch.save(golden, OUT / "golden.pt")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


def pack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors as views of one flat buffer per dtype: torch.save then writes one storage record
    instead of one per tensor (the per-record overhead is most of a tiny checkpoint's size)."""
    out: dict[str, torch.Tensor] = {}
    for dtype in {v.dtype for v in state.values()}:
        keys = [k for k, v in state.items() if v.dtype == dtype]
        flat = torch.cat([state[k].reshape(-1) for k in keys])
        offset = 0
        for k in keys:
            n = state[k].numel()
            out[k] = flat[offset : offset + n].view(state[k].shape)
            offset += n
    return {k: out[k] for k in state}


def make_zoo_golden() -> None:
    """tests/data/mmseg/zoo.pt: one shared backbone, per zoo head its mmseg keys and feature-resolution outputs."""
    import torch.nn.functional as F
    from mmseg.models.backbones.resnet import Bottleneck, ResNet

    ResNet.arch_settings[26] = (Bottleneck, TINY_BLOCKS)
    x = torch.load(OUT / "golden.pt", weights_only=True)["input"]  # the input of the other golden tests
    gen = torch.Generator().manual_seed(1)
    metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:]))]
    zoo: dict = {
        "generator": "scripts/make_mmseg_golden.py",
        "seg_kwargs": ZOO_SEG_KWARGS_COMMON,
        "backbone": None,
        "heads": {},
    }
    for head in ZOO_HEADS:
        cfg = zoo_cfg(head, NUM_CLASSES, tiny=True)
        model = build(cfg)
        randomise(model, gen)
        for m in model.modules():  # GCNet's LayerNorm: weight-like and bias-like (randomise() sees 3-d tensors)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if head == "ema":  # unit-norm bases, as EMAModule keeps them
            model.decode_head.ema_module.bases.copy_(F.normalize(model.decode_head.ema_module.bases, dim=1))
        if zoo["backbone"] is None:
            zoo["backbone"] = {f"backbone.{k}": v.clone() for k, v in model.backbone.state_dict().items()}
        model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in zoo["backbone"].items()})
        model.eval()
        entry: dict = {"mmseg_cfg": cfg, "seg_kwargs": ZOO_SEG_KWARGS[head]}
        with torch.no_grad():
            logits = model.encode_decode(x, metas)
            feats = model.extract_feat(x)
            if head == "ocr":
                entry["aux"] = model.decode_head[0].forward(feats)
                entry["logits"] = model.decode_head[1].forward(feats, entry["aux"])
            else:
                entry["aux"] = model.auxiliary_head(feats)
                entry["logits"] = model.decode_head(feats)
            # encode_decode is the bilinear resize of the head's logits, so feature-resolution goldens suffice
            assert torch.equal(
                logits, F.interpolate(entry["logits"], x.shape[-2:], mode="bilinear", align_corners=False)
            ), head
            entry["state_dict"] = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
            if head == "ema":  # one train-mode step of the head moves the bases towards the batch's
                model.decode_head.train()
                model.decode_head(feats)
                entry["bases_after_train_step"] = model.decode_head.ema_module.bases.clone()
        zoo["heads"][head] = entry
        print(
            f"{head}: logits {tuple(entry['logits'].shape)} |max| {entry['logits'].abs().max():.3f}, "
            f"{sum(v.numel() for v in entry['state_dict'].values())} head values"
        )
    zoo["backbone"] = pack(zoo["backbone"])
    for entry in zoo["heads"].values():
        entry["state_dict"] = pack(entry["state_dict"])
    torch.save(zoo, OUT / "zoo.pt")
    print(f"wrote {OUT / 'zoo.pt'} ({(OUT / 'zoo.pt').stat().st_size / 1024:.0f} KiB)")


def print_counts(num_classes: int = 19) -> None:
    """Parameter counts of the real R50-D8 models (copied into tests/test_mmseg_compat.py)."""
    for head in HEADS:
        model = build(mmseg_cfg(head, num_classes, tiny=False))
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        print(
            f"{head}: decode_head {count(model.decode_head)}, auxiliary_head {count(model.auxiliary_head)}, "
            f"backbone {count(model.backbone)}, total {count(model)}"
        )
    for head in ZOO_HEADS:
        model = build(zoo_cfg(head, num_classes, tiny=False))
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        if head == "ocr":
            print(
                f"{head}: decode_head.1 (OCRHead) {count(model.decode_head[1])}, decode_head.0 (FCN) "
                f"{count(model.decode_head[0])}"
            )
        else:
            print(f"{head}: decode_head {count(model.decode_head)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", action="store_true", help="print R50-D8 parameter counts instead")
    parser.add_argument("--zoo-only", action="store_true", help="only (re)write zoo.pt (reads golden.pt's input)")
    args = parser.parse_args()
    install_mmcv_ops_stub()
    from mmseg.utils import register_all_modules

    register_all_modules()
    if args.counts:
        print_counts()
        return
    if not args.zoo_only:
        make_golden()
    make_zoo_golden()


if __name__ == "__main__":
    main()
