"""What several test modules share: the tiny train.py config and backbone, tiny smp architectures, running a command
as a subprocess, and writers of tiny dataset trees (Folder, Cityscapes, ADE20K layouts). Fixtures live in
conftest.py."""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from seg.models import SmpModel, build_model, head_signature, recipe_output_stride

ROOT = Path(__file__).resolve().parent.parent
TINY_BACKBONE = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "zero_init_last": False}


def tiny_config(path: Path, data_root: Path, run_dir: Path, **trainer) -> Path:
    """A train.py config: tiny backbone, 48x48 scenes, CPU, a few steps."""
    cfg = {
        "seed_everything": 0,
        "model": {
            "backbone": "resnet18",
            "backbone_kwargs": TINY_BACKBONE,
            "head": "fcn",
            "head_kwargs": {"channels": 16},
            "weights": None,
            "channels_last": False,
            "lr": 0.02,
        },
        "data": {
            "dataset": "folder",
            "root": str(data_root),
            "batch_size": 4,
            "val_batch_size": 2,
            "num_workers": 0,
            "crop_size": [32, 32],
        },
        "trainer": {
            "default_root_dir": str(run_dir),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 6,
            "max_epochs": -1,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
        "wandb": "off",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_arch_kwargs(head: str) -> dict:
    """Narrow decoder widths for any architecture, read from its signature: every ``*channels`` argument seg does
    not fill becomes 64 (FPN's GroupNorm has 32 groups: 2 channels each, so a 1 x 1 map still normalises; a
    sequence keeps its length)."""
    builder, supplied = head_signature(head)
    kwargs = {}
    for name, p in inspect.signature(builder).parameters.items():
        if name in supplied or "channels" not in name or p.default is inspect.Parameter.empty:
            continue
        kwargs[name] = tuple(64 for _ in p.default) if isinstance(p.default, (tuple, list)) else 64
    return kwargs


def tiny_smp(head: str, output_stride: int | None = None, num_classes: int = 5, **kw) -> SmpModel:
    """An smp architecture on the tiny ResNet (DPT: timm's ``test_vit``) with ``tiny_arch_kwargs`` widths."""
    backbone, bkw = ("test_vit", {}) if head == "smp:DPT" else ("resnet18", TINY_BACKBONE)  # DPT needs a ViT
    return build_model(
        backbone,
        head,
        num_classes,
        output_stride=output_stride or recipe_output_stride(head),
        aux=False,
        backbone_kwargs=bkw,
        **{**tiny_arch_kwargs(head), **kw},
    )


def run_cmd(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's too
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ``python -c BLOCK_TORCH ARGS``: ``python -m seg.predict ARGS`` in a process that cannot import torch
BLOCK_TORCH = """
import importlib.abc, runpy, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch import blocked on the ONNX path: {name}")
        return None
sys.meta_path.insert(0, BlockTorch())
sys.argv = ["seg.predict", *sys.argv[1:]]
runpy.run_module("seg.predict", run_name="__main__")
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
"""


def run_cmd_without_torch(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m seg.predict *args`` with torch imports blocked (not checked: the caller reads the status)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def write_rgb(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)  # 2-D uint8 -> 'L', HxWx3 -> 'RGB'
    return path


def blocks_mask(h: int, w: int, values: list[int]) -> np.ndarray:
    """Vertical bands of the given values (left to right)."""
    mask = np.zeros((h, w), np.uint8)
    for k, v in enumerate(values):
        mask[:, k * w // len(values) : (k + 1) * w // len(values)] = v
    return mask


def folder_tree(
    root: Path,
    split: str = "train",
    n: int = 3,
    size: tuple[int, int] = (24, 32),
    values: list[int] = (0, 1, 2, 255),
    classes: list[str] | None = None,
) -> Path:
    """{root}/{split}/images/*.png + masks/*.png with band masks; optional classes.json."""
    h, w = size
    rng = np.random.default_rng(0)
    for i in range(n):
        write_rgb(root / split / "images" / f"im{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_mask(root / split / "masks" / f"im{i}.png", blocks_mask(h, w, list(values)))
    if classes is not None:
        (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return root


def network_by_hand(ckpt: Path) -> torch.nn.Module:
    """The network of a train.py checkpoint rebuilt from its Lightning hyper-parameters by hand (no seg loading or
    inference code involved): an independent reference for the loader and the commands."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    net = build_model(
        hp["backbone"],
        hp["head"],
        hp["num_classes"],
        output_stride=hp["output_stride"],
        aux=hp["aux"],
        backbone_kwargs=hp["backbone_kwargs"],
        **hp["head_kwargs"],
    )
    net.load_state_dict({k[len("model.") :]: v for k, v in state["state_dict"].items() if k.startswith("model.")})
    return net.eval()


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A valid PNG header declaring width x height RGB over a few bytes of data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b"")
    )


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-*.wandb``) as ``wandb_internal_pb2.Record`` messages, read
    without wandb's reader: the file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks with a
    7-byte header: CRC32, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pos, parts = Path(path).read_bytes(), [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if length == 0 and kind == 0:  # zero padding up to the next block
            pos += left - 7
            continue
        parts += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records
