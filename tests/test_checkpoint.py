"""Checkpoints: every weight file is read without running code from it (a crafted pickle is refused by every
loader), mmengine metadata is read through the allow-list, broken files give one error naming the file, writes are
atomic, refuse NaN weights, report a full disk plainly, and leave no temp files behind; ``seg.load_model`` reads
every kind of seg checkpoint (self-describing ones, and those written before that by train.py and seg.convert)."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import seg.io as io_mod
from seg.io import remove_stale_temp_files
from seg.loading import load_model
from seg.models import build_model, load_mmseg_checkpoint, save_checkpoint
from seg.models.backbone import TimmBackbone
from seg.models.checkpoint import NonFiniteError, atomic_save, load_strict
from seg.models.safe_load import CheckpointError, read_checkpoint, read_state_dict
from seg.training.checkpointing import AtomicCheckpointIO, check_checkpoint_dir
from seg.training.module import load_matching_weights

TINY = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "zero_init_last": False}


def tiny_model(num_classes: int = 3):
    return build_model("resnet18", "fcn", num_classes, backbone_kwargs=TINY, channels=16)


class _RunsShell:
    """Pickles as a call of os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A checkpoint with real seg weights (every loader would accept them) plus an os.system payload."""
    marker = tmp_path / "pwned"
    state = {"model." + k: v for k, v in tiny_model().state_dict().items()}
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "payload": _RunsShell(marker)}, path)
    return path, marker


def test_crafted_pickle_is_refused_by_every_loader(crafted, tmp_path):
    path, marker = crafted
    loaders = {
        "read_checkpoint": lambda: read_checkpoint(path),
        "seg.load_model (every command's --ckpt)": lambda: load_model(path),
        "init_from": lambda: load_matching_weights(tiny_model(), path),
        "mmseg convert": lambda: load_mmseg_checkpoint(path, "fcn", "resnet18", 3, backbone_kwargs=TINY, channels=16),
        "backbone weights": lambda: TimmBackbone(
            "resnet18", weights=path.rename(tmp_path / "evil.pth"), model_kwargs=TINY
        ),
        "--ckpt_path (Lightning resume)": lambda: AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.pth"),
    }
    for name, load in loaders.items():
        with pytest.raises(
            CheckpointError,
            match=r"references Python objects that seg does not unpickle: "
            r"(posix|nt)\.system",
        ) as err:
            load()
        assert "evil." in str(err.value), name
        assert not marker.exists(), name
    legacy = tmp_path / "evil_legacy.pt"  # the pre-torch-1.6 format: globals are found by trial, still never run
    torch.save({"payload": _RunsShell(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"does not unpickle: (posix|nt)\.system"):
        read_checkpoint(legacy)
    assert not marker.exists()
    # the file really is hostile: a full unpickle runs the command
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


def test_convert_command_refuses_crafted_file(crafted, tmp_path, capsys):
    from seg.convert import main as convert_main

    path, marker = crafted
    rc = convert_main(
        [
            "mmseg",
            str(path),
            str(tmp_path / "out.ckpt"),
            "--head",
            "fcn",
            "--backbone",
            "resnet18",
            "--num_classes",
            "3",
            "--backbone_kwargs",
            '{"layers": [1, 1, 1, 1]}',
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "does not unpickle: posix.system" in err, err
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def _fake_mmengine_checkpoint(path: Path, state: dict[str, torch.Tensor], legacy: bool = False) -> None:
    """What mmengine's Runner saves, with a stand-in mmengine (not installed here): HistoryBuffer objects whose
    state holds numpy arrays and class-level methods, numpy scalars in runtime_info and schedulers."""
    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])
            self._statistics_methods = {"min": HistoryBuffer.min, "mean": HistoryBuffer.mean}

        def min(self):
            return self._log_history.min()

        def mean(self):
            return self._log_history.mean()

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = mod.__name__, "HistoryBuffer"
    for method in (HistoryBuffer.min, HistoryBuffer.mean):
        method.__module__, method.__qualname__ = mod.__name__, f"HistoryBuffer.{method.__name__}"
    mod.HistoryBuffer = HistoryBuffer
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = mod if n == mod.__name__ else types.ModuleType(n)
    sys.modules["mmengine.logging"].history_buffer = mod
    sys.modules["mmengine"].logging = sys.modules["mmengine.logging"]
    try:
        torch.save(
            {
                "meta": {"epoch": 1, "iter": 40000, "dataset_meta": {"classes": ("a", "b", "c")}},
                "state_dict": state,
                "message_hub": {
                    "log_scalars": {"train/loss": HistoryBuffer()},
                    "runtime_info": {"iter": np.int64(40000)},
                },
                "param_schedulers": [{"power": np.float64(0.9)}],
            },
            path,
            _use_new_zipfile_serialization=not legacy,
        )  # legacy: the pre-torch-1.6 format of old checkpoints
    finally:
        for n, m in saved.items():
            sys.modules.pop(n) if m is None else sys.modules.__setitem__(n, m)
    if legacy:
        return
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"mmengine.logging.history_buffer.HistoryBuffer", "builtins.getattr", "numpy.ndarray"} <= names  # as real


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_mmengine_metadata_is_read_through_the_allow_list(tmp_path, legacy):
    model = tiny_model()
    from seg.models.mmseg import convert_mmseg_state_dict

    def to_mmseg(key: str) -> str:  # our tiny model's keys under mmseg's prefixes
        for ours, theirs in (
            ("backbone.body.", "backbone."),
            ("aux_head.", "auxiliary_head."),
            ("head.", "decode_head."),
        ):
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        return key

    mm_state = {to_mmseg(k): v for k, v in model.state_dict().items()}
    assert convert_mmseg_state_dict(mm_state).keys() == model.state_dict().keys()
    path = tmp_path / "mm.pth"
    _fake_mmengine_checkpoint(path, mm_state, legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # plain weights_only refuses the metadata
    ckpt = read_checkpoint(path)
    assert ckpt["meta"]["iter"] == 40000 and ckpt["param_schedulers"][0]["power"] == 0.9
    loaded = load_mmseg_checkpoint(path, "fcn", "resnet18", 3, backbone_kwargs=TINY, channels=16)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize(
    "content", [b"", b"hello, this is a text file\n", b"PK\x03\x04truncated"], ids=["empty", "text", "truncated-zip"]
)
def test_broken_files_name_the_file(tmp_path, content):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"--ckpt: {path} (is empty|is not a readable)") as err:
        read_checkpoint(path, what="--ckpt")
    assert "best.ckpt" not in str(err.value)
    atomic_save({"state_dict": {"model.w": torch.zeros(1)}}, path.with_name("best.ckpt"))
    with pytest.raises(CheckpointError, match=r"best\.ckpt exists: resume from it with --ckpt_path .*best\.ckpt"):
        read_checkpoint(path, what="--ckpt_path")
    with pytest.raises(FileNotFoundError, match=r"init_from: .*nope\.ckpt does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt", what="init_from")


def test_seg_checkpoint_round_trip_and_strict_errors(tmp_path):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "m.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]
    again, info = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    assert info.build == model.build_args and info.classes == ["class_0", "class_1", "class_2"]
    with pytest.raises(
        CheckpointError,
        match=r"(?s)shape mismatches: \['head.conv_seg.weight: checkpoint \(3, 16"
        r".*Check --config",
    ):
        load_strict(
            tiny_model(5), {k[len("model.") :]: v for k, v in read_state_dict(path).items()}, "x", "Check --config"
        )
    report = load_matching_weights(tiny_model(5), path)
    assert "head.conv_seg.weight (3, 16, 1, 1) -> (5, 16, 1, 1)" in report["shape_mismatch"]
    assert read_state_dict(path)["model.head.conv_seg.bias"].shape == (3,)


def test_atomic_save_refuses_non_finite_weights(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(NonFiniteError, match=r"refusing to write .*last\.ckpt: 1 tensors hold NaN/Inf \(\['w'\]\)"):
        atomic_save({"state_dict": {"w": torch.tensor([1.0, float("nan")]), "step": torch.tensor(3)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))  # previous file kept
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_is_one_plain_error(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)
    real_open = open
    monkeypatch.setattr(io_mod, "open", lambda p, mode: real_open("/dev/full", mode), raising=False)
    with pytest.raises(OSError, match=r"cannot write .*last\.ckpt: no space left on device \(\d+ MiB free") as err:
        atomic_save({"w": torch.zeros(100_000)}, path)
    assert err.value.errno == errno.ENOSPC and err.value.__cause__ is None and "inline_container" not in str(err.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_temp_files_removed_and_dir_checked_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    orphan = ckpts / f".last.ckpt.tmp{dead.pid}"  # left by a kill -9 mid-save
    live = ckpts / f".last.ckpt.tmp{os.getppid()}"  # another live process's save in progress
    for p in (orphan, live):
        p.write_bytes(b"partial")
    (ckpts / "last.ckpt").write_bytes(b"x")
    assert remove_stale_temp_files(ckpts) == [orphan]
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([live.name, "last.ckpt"])
    check_checkpoint_dir(ckpts)  # writable: passes, leaves no probe behind
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([live.name, "last.ckpt"])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        PermissionError,
        match=rf"checkpoint folder {blocker}/checkpoints is not writable .*"
        r"--checkpoint\.dirpath",
    ):
        check_checkpoint_dir(blocker / "checkpoints")
