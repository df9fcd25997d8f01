"""Generate seg/zoo/table.json: every checkpoint mmsegmentation 1.2.2 publishes that seg builds exactly.

NOT part of the seg package and NOT run in CI: it reads mmsegmentation's own ``metafile.yaml`` files and configs
(inside its wheel) with mmengine's ``Config``, in the dev venv of scripts/make_mmseg_golden.py::

    pip download mmsegmentation==1.2.2 --no-deps -d /tmp/mmsegdl
    /tmp/mmenv/bin/python scripts/make_zoo_table.py /tmp/mmsegdl/mmsegmentation-1.2.2-py3-none-any.whl

For each model of the metafiles of the 14 heads seg reproduces (``HEAD_FOLDERS``), its config is loaded and its
``model`` compared with the R50-D8 base model of that head (``configs/_base_/models/<x>_r50-d8.py``, UPerNet
``upernet_r50.py``: the architecture seg's heads are tested against, tests/test_mmseg_compat.py). A checkpoint is
kept when the two differ only where seg follows: the ResNetV1c depth (50 / 101, initialised from
``open-mmlab://resnet{50,101}_v1c``), the class count (the data set's), the padding size and the test mode
(``whole`` / ``slide`` with its window), and its data set is one seg reads (``CityscapesDataset``,
``ADE20KDataset``). Everything else excludes it, with the reason printed (``align_corners=True`` of the 769x769
Cityscapes configs, other backbones / norms / strides / head settings, other data sets).

The table records, per checkpoint: mmseg's name, the seg head / backbone / output stride / class count, the data
set, the training crop (H, W) and iterations, the evaluation settings, the weights URL (its file name carries the
SHA-256 prefix) and the published mIoU (single scale, and multi-scale + flip where published). Its header records
how many models the metafiles list per head and how many were kept, which tests/test_zoo.py checks.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "seg" / "zoo" / "table.json"
# seg head -> (mmseg config folder, base model file, decode head type)
HEAD_FOLDERS = {
    "fcn": ("fcn", "fcn_r50-d8.py", "FCNHead"),
    "psp": ("pspnet", "pspnet_r50-d8.py", "PSPHead"),
    "aspp": ("deeplabv3", "deeplabv3_r50-d8.py", "ASPPHead"),
    "sep_aspp": ("deeplabv3plus", "deeplabv3plus_r50-d8.py", "DepthwiseSeparableASPPHead"),
    "ccnet": ("ccnet", "ccnet_r50-d8.py", "CCHead"),
    "danet": ("danet", "danet_r50-d8.py", "DAHead"),
    "nonlocal": ("nonlocal_net", "nonlocal_r50-d8.py", "NLHead"),
    "gc": ("gcnet", "gcnet_r50-d8.py", "GCHead"),
    "ema": ("emanet", "emanet_r50-d8.py", "EMAHead"),
    "isa": ("isanet", "isanet_r50-d8.py", "ISAHead"),
    "dnl": ("dnlnet", "dnl_r50-d8.py", "DNLHead"),
    "ann": ("ann", "ann_r50-d8.py", "ANNHead"),
    "ocr": ("ocrnet", "ocrnet_r50-d8.py", "OCRHead"),
    "uper": ("upernet", "upernet_r50.py", "UPerHead"),
}
DATASETS = {"CityscapesDataset": ("cityscapes", 19), "ADE20KDataset": ("ade20k", 150)}
BACKBONES = {50: "resnet50c", 101: "resnet101c"}
STRIDES = {(1, 2, 1, 1): 8, (1, 2, 2, 1): 16, (1, 2, 2, 2): 32}


def _plain(obj):
    """Config values as plain JSON-like data (tuples -> lists), for comparison."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _heads(model: dict) -> list[dict]:
    heads = model["decode_head"] if isinstance(model["decode_head"], list) else [model["decode_head"]]
    return heads + ([model["auxiliary_head"]] if model.get("auxiliary_head") else [])


def normalised(model: dict) -> tuple[dict, dict]:
    """(the model with the settings seg follows taken out, those settings)."""
    model = _plain(copy.deepcopy(dict(model)))
    backbone = model["backbone"]
    depth = backbone.pop("depth", None)
    pretrained = model.pop("pretrained", None) or (backbone.pop("init_cfg", None) or {}).get("checkpoint")
    classes = {h.pop("num_classes", None) for h in _heads(model)}
    size = model["data_preprocessor"].pop("size", None)
    test_cfg = model.pop("test_cfg", {})
    model.pop("train_cfg", None)
    return model, dict(depth=depth, pretrained=pretrained, classes=classes, size=size, test_cfg=test_cfg)


def diff(a, b, path="model") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {a.get(k, '<absent>')} vs base {b.get(k, '<absent>')}")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a} vs base {b}"]


def metrics(model: dict) -> tuple[float | None, float | None]:
    results = model.get("Results") or []
    for r in results if isinstance(results, list) else [results]:  # the first (OCRNet's 'Dataset' is a comment)
        m = r.get("Metrics") or {}
        return m.get("mIoU"), m.get("mIoU(ms+flip)")
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", help="mmsegmentation-1.2.2-py3-none-any.whl")
    args = parser.parse_args()
    from mmengine import Config

    tmp = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(args.wheel) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("mmseg/.mim/configs/")])
    configs = tmp / "mmseg" / ".mim" / "configs"
    rows, listed, excluded = [], Counter(), []
    for head, (folder, base_file, head_type) in HEAD_FOLDERS.items():
        base, _ = normalised(Config.fromfile(configs / "_base_" / "models" / base_file).model)
        decode = base["decode_head"][-1] if isinstance(base["decode_head"], list) else base["decode_head"]
        assert decode["type"] == head_type, (base_file, decode["type"])  # the mmseg head seg's head reproduces
        meta = yaml.safe_load((configs / folder / "metafile.yaml").read_text())
        for entry in meta["Models"]:
            listed[head] += 1
            name = entry["Name"]
            path = configs.parent / entry["Config"]
            fixed = path.with_name(path.name[1:])
            if not path.is_file() and path.name[0] == path.name[1] and fixed.is_file():
                print(f"corrected {name} -> {fixed.stem} (a doubled letter in the metafile)", file=sys.stderr)
                path, name = fixed, fixed.stem  # the metafile's 'eemanet_...', 'ddeeplabv3plus_...'
            if not path.is_file():
                excluded.append((name, [f"its config {entry['Config']} is not in the package"]))
                continue
            named = re.search(r"-(\d+)k_", name)
            in_url = re.search(r"_(\d+)k_", entry["Weights"].rsplit("/", 1)[-1])
            if not named or not in_url or named.group(1) != in_url.group(1):
                excluded.append((name, [f"the metafile's weights URL is for another schedule: {entry['Weights']}"]))
                continue
            cfg = Config.fromfile(path)
            model, taken = normalised(cfg.model)
            dataset = cfg.train_dataloader.dataset
            dataset_type = dataset.get("type")
            while dataset_type not in DATASETS and "dataset" in dataset:  # RepeatDataset ...
                dataset = dataset["dataset"]
                dataset_type = dataset.get("type")
            why = diff(model, base)
            if dataset_type not in DATASETS:
                why.append(f"data set {dataset_type}")
            if taken["depth"] not in BACKBONES:
                why.append(f"ResNet depth {taken['depth']}")
            elif taken["pretrained"] != f"open-mmlab://resnet{taken['depth']}_v1c":
                why.append(f"backbone init {taken['pretrained']}")
            if why:
                excluded.append((name, why))
                continue
            dataset_name, num_classes = DATASETS[dataset_type]
            if taken["classes"] != {num_classes}:
                excluded.append((name, [f"classes {taken['classes']}"]))
                continue
            test_cfg = taken["test_cfg"]
            ss, ms = metrics(entry)
            url = entry["Weights"]
            rows.append(
                {
                    "name": name,
                    "head": head,
                    "backbone": BACKBONES[taken["depth"]],
                    "output_stride": STRIDES[tuple(cfg.model.backbone.strides)],
                    "num_classes": num_classes,
                    "dataset": dataset_name,
                    "crop_size": list(cfg.crop_size),
                    "iters": int(named.group(1)) * 1000,  # the name's (an amp config inherits 40k, trained 80k)
                    "eval": {
                        "mode": test_cfg.get("mode", "whole"),
                        **(
                            {"crop_size": test_cfg["crop_size"], "stride": test_cfg["stride"]}
                            if "stride" in test_cfg
                            else {}
                        ),
                    },
                    "url": url,
                    "mIoU": ss,
                    "mIoU_ms_flip": ms,
                }
            )
    for name, why in excluded:
        print(f"excluded {name}: {'; '.join(why[:3])}{' ...' if len(why) > 3 else ''}", file=sys.stderr)
    names = Counter(r["name"] for r in rows)
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1]
    kept = Counter(r["head"] for r in rows)
    table = {
        "source": "mmsegmentation 1.2.2 configs/*/metafile.yaml (scripts/make_zoo_table.py)",
        "listed_per_head": dict(listed),
        "kept_per_head": {h: kept.get(h, 0) for h in HEAD_FOLDERS},
        "count": len(rows),
        "rows": rows,
    }
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT}: {len(rows)} of {sum(listed.values())} published checkpoints ({dict(kept)})")


if __name__ == "__main__":
    main()
