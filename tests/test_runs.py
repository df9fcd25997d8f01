"""Runs that never report a success they did not have, and configs that run no code: one section per case of the
issue "runs that never report success they did not have" (its number in the section's comment). Every test runs
train.py as users do (a subprocess, or ``main`` with the command line), on tiny runs."""

from __future__ import annotations

import csv
import glob
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, tiny_config

from seg.compare.runs import train_runs
from seg.data.synthetic import write_demo
from seg.training.cli import main
from seg.training.module import SegmentationModule


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"}


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- 12: configs name no code outside seg, torch and Lightning


def test_config_scan_finds_code_at_any_depth():
    """class_path anywhere (init_args included) and class shorthands outside seg / torch / Lightning are refused;
    seg's, torch's and Lightning's classes, data paths, timm names with a tag and file names pass."""
    from seg.training.config_scan import ConfigCodeError, check_object

    ok = {
        "model": {"backbone": "resnet50.a1_in1k", "weights": "x/timm.pth", "lr": 0.01},
        "trainer": {
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"log_momentum": True}},
                "lightning.pytorch.callbacks.EarlyStopping",
                {"class_path": "ModelCheckpoint"},
            ],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        },
    }
    check_object(ok)
    nested = {"trainer": {"callbacks": [{"class_path": "seg.X", "init_args": {"inner": {"class_path": "evil.Cb"}}}]}}
    with pytest.raises(ConfigCodeError, match=r"trainer.callbacks\[0\].init_args.inner.class_path: 'evil.Cb'"):
        check_object(nested)
    with pytest.raises(ConfigCodeError, match=r"trainer.callbacks\[0\]: 'os.system'"):
        check_object({"trainer": {"callbacks": ["os.system"]}})  # a shorthand jsonargparse would import


def _write_download(folder: Path, data_root: Path) -> Path:
    """A downloaded run folder: a config, and an evil.py beside it that leaves a marker if it is imported."""
    folder.mkdir()
    (folder / "evil.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('IMPORTED').write_text('evil.py ran')\n"
        "from lightning.pytorch.callbacks import Callback\n"
        "class Cb(Callback):\n    pass\n"
    )
    return tiny_config(folder / "config.yaml", data_root, folder / "run", max_steps=1)


@pytest.mark.parametrize("form", ["class_path", "trainer_file"])
def test_a_config_naming_other_code_imports_nothing(tiny_data, tmp_path, form):
    """`python -m` puts the current directory first on sys.path: with evil.py there, a config naming `evil.Cb`
    (as a class_path, or as a shorthand in a file given as `--trainer=trainer.yaml` after a second --config) is
    refused with exit 2 naming the file, the key and the value, and evil.py never runs."""
    folder = tmp_path / "download"
    cfg = _write_download(folder, tiny_data)
    if form == "class_path":
        text = yaml.safe_load(cfg.read_text())
        text["trainer"]["callbacks"] = [{"class_path": "evil.Cb"}]
        cfg.write_text(yaml.safe_dump(text))
        args, where = ["--config", "config.yaml"], r"config.yaml: trainer.callbacks\[0\].class_path: 'evil.Cb'"
    else:
        (folder / "extra.yaml").write_text("seed_everything: 1\n")
        (folder / "trainer.yaml").write_text("callbacks:\n  - evil.Cb\n")
        args, where = (
            ["--config", "config.yaml", "--config", "extra.yaml", "--trainer=trainer.yaml"],
            (r"trainer.yaml: callbacks\[0\]: 'evil.Cb'"),
        )
    proc = subprocess.run(
        [sys.executable, "-m", "seg.training.cli", *args],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not (folder / "IMPORTED").exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(where + r" names code outside seg, torch and Lightning", proc.stderr), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


# -- 13: W&B settings and output


def test_wandb_off_in_yaml_is_off(tiny_data, tmp_path, capsys):
    """`wandb: off` as written in YAML (a boolean in YAML 1.1) and `--wandb=off` both mean W&B off."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run")
    cfg.write_text(cfg.read_text().replace("wandb: 'off'", "wandb: off"))
    assert "wandb: off\n" in cfg.read_text()
    for extra in ([], ["--wandb=off"]):
        with pytest.raises(SystemExit) as done:
            main(["--config", str(cfg), *extra, "--print_config"])
        assert done.value.code == 0
        assert yaml.safe_load(capsys.readouterr().out)["wandb"] == "off"


def test_wandb_output_in_a_log_file_is_plain(tiny_data, tmp_path):
    """An offline W&B run whose output goes to a file: W&B's lines are there, without terminal colour codes and
    without the `anonymous` warning every run used to print; W&B's closing lines are quiet, and the closing block
    (last) says how to upload the run."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=1)
    env = {k: v for k, v in _env().items() if not k.startswith("WANDB_")}
    env.update({v: str(tmp_path / "wb" / v.lower()) for v in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")})
    env["WANDB_DATA_DIR"] = str(tmp_path / "wb/data")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", str(cfg), "--wandb=offline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Run data is saved locally" in text  # W&B did print its lines
    assert "Run history" not in text and "Run summary" not in text  # its closing tables are quiet
    last = proc.stdout.rstrip().splitlines()
    assert any(
        re.match(r"  W&B run fcn-resnet18-s0 \(offline\); upload with: wandb sync .*/run/wandb/", x) for x in last
    )
    assert "\x1b[" not in text, [line for line in text.splitlines() if "\x1b[" in line]
    assert "anonymous" not in text


# -- 11: a 1-image batch at a pooled BatchNorm


def test_one_image_batch_at_pooled_batchnorm_is_a_one_line_error(tmp_path, monkeypatch):
    """A 1-image training split with PSP (BatchNorm after its 1x1 pooling): one `error:` line saying it is the split
    size and the batch, not torch's "Expected more than 1 value per channel when training"."""
    root = tmp_path / "one"
    write_demo(root, splits={"train": 1, "val": 1}, size=48)
    cfg = tiny_config(tmp_path / "cfg.yaml", root, tmp_path / "run", max_steps=1)
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(cfg), "--model.head=psp"])
    with pytest.raises(SystemExit) as failed:
        main()
    message = failed.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message == (
        "error: a training batch holds 1 image: the training split has 1 image(s) and data.batch_size=4, and "
        "BatchNorm after pooling (model.head=psp) needs at least 2 images per batch. Use a larger training split "
        "or data.batch_size, or a head without BatchNorm after pooling (e.g. --model.head=fcn)"
    )


# -- 8: one run per run folder


def test_one_run_per_run_folder_and_stale_locks_are_taken_over(tiny_data, tmp_path, monkeypatch, caplog):
    """A run folder held by a live process (its `.lock`): train.py stops with one error naming the holder, before
    writing anything. Once that process is gone, its lock is taken over with a note, and removed at the end."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "now", "command": "python train.py x"}
    (run / ".lock").write_text(json.dumps(lock))
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, run, max_steps=1)
    try:
        monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(cfg)])
        with pytest.raises(SystemExit) as refused:
            main()
        message = refused.value.code
        assert isinstance(message, str) and "\n" not in message, message
        assert message.startswith(f"error: {run} is in use by another training run (PID {holder.pid} on host ")
        assert "python train.py x" in message and "--trainer.default_root_dir" in message
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no config.yaml, no logs
        with pytest.raises(RuntimeError, match="is in use by another training run"):  # RunDirBusy, from Python
            main(["--config", str(cfg)])
    finally:
        holder.kill()
        holder.wait()
    main(["--config", str(cfg)])
    assert f"{run}/.lock was left by PID {holder.pid} on this host, which is no longer running" in caplog.text
    assert (run / "checkpoints/last.ckpt").is_file() and not (run / ".lock").exists()


# -- 9: a resume with a changed config


def test_resume_refuses_a_changed_network_before_writing_anything(trained_run, tiny_data, tmp_path):
    """Other head channels and output stride, or other class names: one error listing each change (old -> new) and
    what to do, and the run folder is as it was (config.yaml and last.ckpt still match)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, run, max_steps=8)
    with pytest.raises(ValueError) as refused:  # ResumeConfigError
        main(["--config", str(cfg), "--model.head_kwargs.channels=32", "--model.output_stride=16", "--ckpt_path=last"])
    message = str(refused.value)
    assert message.startswith(f"--ckpt_path {run}/checkpoints/last.ckpt cannot continue with this config")
    assert "model.head_kwargs.channels 16 -> 32" in message and "model.output_stride 8 -> 16" in message
    assert f"--model.init_from={run}/checkpoints/last.ckpt" in message and "--trainer.default_root_dir" in message
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_data, renamed)
    meta = json.loads((renamed / "classes.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (renamed / "classes.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"classes \['sand', .*\] -> \['pool', "):
        main(["--config", str(cfg), f"--data.root={renamed}", "--ckpt_path=last"])
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_resume_applies_a_new_lr_and_a_longer_schedule(tiny_data, tmp_path, caplog):
    """4 steps of a 4-step poly schedule at lr 0.02, then `--trainer.max_steps=8 --model.lr=0.01 --ckpt_path last`:
    the line says so, and steps 4..7 train on the new 8-iteration curve from 0.01 (the LR logged per step, the
    optimizer and the schedule in the final checkpoint), not on the old one (min_lr from step 3 on)."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=4, val_check_interval=4)
    main(["--config", str(cfg)])
    caplog.clear()
    main(["--config", str(cfg), "--trainer.max_steps=8", "--model.lr=0.01", "--ckpt_path", "last"])
    assert re.search(
        r"resuming \S+last.ckpt \(step 4\) with changed settings, applied from there: model.lr 0.02 -> 0.01, "
        r"poly schedule 4 -> 8 iterations \(trainer.max_steps\)",
        caplog.text,
    )
    (resumed,) = glob.glob(str(tmp_path / "run/csv/version_1/metrics.csv"))
    lrs = [float(r["train/lr"]) for r in csv.DictReader(open(resumed)) if r.get("train/lr")]
    assert lrs == pytest.approx([(0.01 - 1e-4) * (1 - t / 7) ** 0.9 + 1e-4 for t in range(4, 8)], rel=1e-6)
    last = _ckpt(tmp_path / "run/checkpoints/last.ckpt")
    assert last["lr_schedulers"][0]["max_iters"] == 8 and last["lr_schedulers"][0]["base_lrs"] == [0.01]
    assert last["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.01
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["model"]["lr"] == 0.01


# -- 7: SIGTERM / Ctrl-C


# every run of the interruption tests: 8 poly iterations whatever max_steps says, validations at steps 4 and 8
COMMON = ["--model.max_iters=8", "--trainer.val_check_interval=4"]


def _lines(stream) -> "queue.Queue[str]":
    """The lines of a pipe, read by a thread (so a test can wait for one with a timeout)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _wait_for(lines: "queue.Queue[str]", pattern: str, timeout: float = 300) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{''.join(seen[-30:])}")


def _same_run(reference: Path, resumed: Path) -> None:
    """Same final weights, momentum buffers, LR schedule position and validation mIoU."""
    a, b = _ckpt(reference / "checkpoints/last.ckpt"), _ckpt(resumed / "checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} tensors differ: {differ[:5]}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["lr_schedulers"][0] == b["lr_schedulers"][0]
    ra, rb = (json.loads((r / "summary.json").read_text()) for r in (reference, resumed))
    assert ra["last"]["mIoU"] == rb["last"]["mIoU"] and ra["best"]["mIoU"] == rb["best"]["mIoU"]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted 8-step run the interrupted ones must equal once resumed."""
    tmp = tmp_path_factory.mktemp("reference")
    main(["--config", str(tiny_config(tmp / "cfg.yaml", tiny_data, tmp / "run", max_steps=8)), *COMMON])
    return tmp / "run"


def test_sigterm_saves_last_ckpt_exits_143_and_resumes_exactly(reference, tiny_data, tmp_path):
    """`kill PID` on a real train.py (a budget it would need minutes for): it holds `.lock` while it runs, ends
    with exit 143, one line naming the checkpoint and the command that continues, `last.ckpt` at the step it
    stopped at (not the last validation), no lock left; `--ckpt_path last` then ends where the uninterrupted run
    ends, weight for weight."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=1000, enable_progress_bar=True)
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", str(cfg), *COMMON],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.txt", "w"),
        text=True,
    )
    try:
        _wait_for(_lines(proc.stdout), r"^step 2/1000 ")
        lock = json.loads((tmp_path / "run/.lock").read_text())
        assert lock["pid"] == proc.pid and lock["host"] == socket.gethostname()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        proc.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("stopped by SIGTERM")]
    step = int(re.match(r"stopped by SIGTERM at step (\d+) of 1000: saved (\S+); continue with: (.*)$", line)[1])
    assert re.search(rf"saved {tmp_path}/run/checkpoints/last.ckpt; .*--ckpt_path last$", line), line
    assert 2 <= step < 8 and _ckpt(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == step
    assert not (tmp_path / "run/.lock").exists()
    cli = main(["--config", str(cfg), *COMMON, "--trainer.max_steps=8", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 8
    _same_run(reference, tmp_path / "run")


def test_ctrl_c_at_a_validation_step_validates_saves_and_resumes_exactly(reference, tiny_data, tmp_path, monkeypatch):
    """SIGINT during step 4, whose validation is due: the step ends, its validation runs (summary.json, best.ckpt),
    then the run stops with code 130 and `last.ckpt` at step 4; resuming it equals the uninterrupted run."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=8)
    train_step = SegmentationModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == 3:  # step 4 is running
            os.kill(os.getpid(), signal.SIGINT)
        return train_step(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", interrupted)
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN in a shell's background job
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(cfg), *COMMON])
    assert stop.value.code == 130
    assert stop.value.message == f"stopped by SIGINT at step 4 of 8: saved {tmp_path}/run/checkpoints/last.ckpt"
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back: Ctrl-C works again afterwards
    assert _ckpt(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == 4
    assert json.loads((tmp_path / "run/summary.json").read_text())["last"]["step"] == 4  # validated first
    monkeypatch.setattr(SegmentationModule, "training_step", train_step)
    main(["--config", str(cfg), *COMMON, "--ckpt_path", "last"])
    _same_run(reference, tmp_path / "run")


def test_compare_train_resumes_a_run_stopped_by_sigterm(tiny_data, tmp_path):
    """SIGTERM to the comparison (``kill``, ``docker stop`` reach only it) is passed on to its train.py: the run saves
    and stops, the comparison fails with one line and exit code 143 instead of counting the run as trained, and the
    next `train_runs` resumes it to the full budget."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "unused", max_steps=8)
    extra = ["--data.num_workers=0", "--wandb=off", "--trainer.enable_progress_bar=true", *COMMON]
    out = tmp_path / "cmp"
    args = ["-m", "seg.compare", "--train", "--config", str(cfg), "--heads", "fcn", "--seeds", "1", "--out", str(out)]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, *args, "--bootstrap", "10", "--", *extra],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            _wait_for(_lines(proc.stdout), r"^step 2/8 ")
            proc.send_signal(signal.SIGTERM)  # the comparison's own process, not its train.py
            assert proc.wait(timeout=120) == 143
        finally:
            proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "error: the run" in stderr and "was stopped by SIGTERM" in stderr and "Traceback" not in stderr
    run = out / "fcn-s0"
    assert not (run / "compare_train.json").exists()
    assert 2 <= _ckpt(run / "checkpoints/last.ckpt")["global_step"] < 8
    train_runs(str(cfg), ["fcn"], [0], out, extra, "g")
    assert _ckpt(run / "checkpoints/last.ckpt")["global_step"] == 8
    assert (run / "compare_train.json").exists()
