"""What a training run shows: the closing block (result in %, per-class IoU, files, next commands) checked against
summary.json read here, one progress bar for the whole run on a terminal, Lightning's start-up notices kept quiet,
the W&B run's name, tags, job type and best-mIoU summary (offline), and the CPU fine-tuning config."""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import yaml
from helpers import ROOT, folder_tree, tiny_config, wandb_records

from seg.training.cli import main
from seg.training.console import quiet_lightning
from seg.training.progress import SegProgressBar
from seg.training.summary import closing_block, next_commands


def _block(text: str) -> list[str]:
    """The closing block's lines: from "Training finished" to the end."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Training finished"))
    return lines[start:]


def test_closing_block_reports_summary_json(tiny_data, tmp_path, capsys):
    """The block printed at the end of a run: best and last mIoU in % with their steps, every class's IoU and Acc
    of the best validation, the four files and the three commands, as summary.json (read here) holds them. It is
    the last thing printed."""
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, run, max_steps=4, val_check_interval=2)
    main(["--config", str(cfg)])
    out = capsys.readouterr().out
    block = _block(out)
    assert out.rstrip().endswith(block[-1])
    assert not re.search(r"^step \d", out, flags=re.M)  # enable_progress_bar: false (tiny_config) still means none
    summary = json.loads((run / "summary.json").read_text())
    best, last = summary["best"], summary["last"]
    assert block[0].startswith("Training finished: 4 steps in 0:00:")
    assert f"best {100 * best['mIoU']:.2f}% at step {best['step']}" in block[1]
    assert f"last {100 * last['mIoU']:.2f}% at step {last['step']}" in block[1]
    assert best["mIoU"] == max(best["mIoU"], last["mIoU"]) and last["step"] == 4
    rows = {line.split()[0]: line.split()[1:] for line in block if re.match(r"^ {4}\w+ +[\d.-]+ +[\d.-]+$", line)}
    assert list(rows) == list(best["per_class_IoU"])  # 5 classes: all of them, in the dataset's order
    for name, (iou, acc) in rows.items():
        assert float(iou) == pytest.approx(100 * best["per_class_IoU"][name], abs=0.006)
        assert float(acc) == pytest.approx(100 * best["per_class_Acc"][name], abs=0.006)
    labels = ("best.ckpt", "last.ckpt", "summary", "config")
    files = {line.split()[0]: Path(line.split()[-1]) for line in block if line.split()[0] in labels}
    assert files["best.ckpt"] == run / "checkpoints/best.ckpt" and files["last.ckpt"] == run / "checkpoints/last.ckpt"
    assert files["summary"] == run / "summary.json" and files["config"] == run / "config.yaml"
    assert all(p.is_file() for p in files.values())
    commands = block[block.index("Next:") + 1 :]
    assert commands == [
        f"  {c}" for c in next_commands(str(files["best.ckpt"]), str(run), str(tiny_data / "val/images"))
    ]


def test_closing_block_lists_the_best_and_worst_of_many_classes(tmp_path):
    """Over 20 classes: the 5 highest and 5 lowest IoU (sorted here), classes without an IoU counted, not ranked;
    without a validation the block says so and suggests no command."""
    names = [f"c{i:02d}" for i in range(30)]
    iou = {n: (i * 7 % 30) / 30 for i, n in enumerate(names)}
    iou["c05"] = None  # absent from the split
    scores = {"mIoU": 0.5, "aAcc": 0.9, "mAcc": 0.6, "per_class_IoU": iou, "per_class_Acc": dict(iou), "step": 8}
    (tmp_path / "summary.json").write_text(json.dumps({"global_step": 8, "best": scores, "last": scores}))
    block = closing_block(tmp_path, tmp_path / "checkpoints").splitlines()
    shown = [line.split()[0] for line in block if re.match(r"^ {4}c\d\d ", line)]
    ranked = sorted((n for n in names if iou[n] is not None), key=lambda n: -iou[n])
    assert shown == ranked[:5] + ranked[-5:]
    assert any("5 highest and 5 lowest IoU of 30 classes (1 without IoU" in line for line in block)
    (tmp_path / "summary.json").unlink()
    text = closing_block(tmp_path, tmp_path / "checkpoints")
    assert "no validation ran" in text and "Next:" not in text


def test_next_commands_parse_with_the_tools_own_parsers(tmp_path, capsys):
    """Every suggested command is accepted by the tool it names (flag spellings kept in step with the tools)."""
    from seg import evaluate, export, predict
    from seg.training.tool_cli import tool_parser

    evaluate_cmd, predict_cmd, export_cmd = next_commands("runs/a b/best.ckpt", "runs/a b", "data/x/val/images")
    parsers = {
        "seg.evaluate": tool_parser(
            "python -m seg.evaluate", evaluate.DESCRIPTION, evaluate.USAGE, evaluate._own_arguments
        ),
        "seg.predict": tool_parser(
            predict.PROG, predict.DESCRIPTION, predict.USAGE, predict._own_arguments, trainer=False
        ),
    }
    for cmd in (evaluate_cmd, predict_cmd):
        argv = shlex.split(cmd)
        ns = parsers[argv[2]].parse_args(argv[3:])
        assert ns.ckpt == "runs/a b/best.ckpt"
    assert parsers["seg.predict"].parse_args(shlex.split(predict_cmd)[3:]).input == "data/x/val/images"
    ns = export.build_parser().parse_args(shlex.split(export_cmd)[3:])
    assert (ns.ckpt, ns.format, ns.out) == ("runs/a b/best.ckpt", "onnx", "runs/a b/model.onnx")
    assert capsys.readouterr().err == ""  # no renamed-flag notes: the commands use the one convention


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_progress_bar_for_the_whole_run(tiny_data, tmp_path, monkeypatch):
    """On a terminal: 8 steps over 3 epochs (3 batches each) draw one bar counting to 8 (never an epoch's 3), whose
    postfix has the loss, the lr and the last mIoU in %, and no v_num; validation's bar is cleared."""
    cfg = tiny_config(
        tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=8, val_check_interval=4, enable_progress_bar=True
    )
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    bars, make_bar = [], SegProgressBar.init_train_tqdm
    monkeypatch.setattr(SegProgressBar, "init_train_tqdm", lambda self: bars.append(make_bar(self)) or bars[-1])
    val_bars, make_val_bar = [], SegProgressBar.init_validation_tqdm
    monkeypatch.setattr(
        SegProgressBar, "init_validation_tqdm", lambda self: val_bars.append(make_val_bar(self)) or val_bars[-1]
    )
    cli = main(["--config", str(cfg)])
    text = terminal.getvalue()
    assert cli.trainer.current_epoch >= 2  # the run did span several epochs
    assert len(bars) == 1 and (bars[0].n, bars[0].total) == (8, 8)
    drawn = [seg for line in text.split("\n") for seg in line.split("\r") if seg.startswith("Training:")]
    counts = [re.search(r"\| (\d+)/(\S+) \[", seg).groups() for seg in drawn]
    assert {total for _, total in counts} <= {"8", "?"}, set(counts)  # "?" before the total is set
    done = [int(n) for n, total in counts if total == "8"]
    assert done == sorted(done) and done[-1] == 8
    assert re.search(r"8/8 .*loss=[\d.]+, lr=[\d.e-]+, mIoU=[\d.]+%\]", drawn[-1]), drawn[-1]
    assert "v_num" not in text and "Epoch" not in text
    assert len(val_bars) == 2 and not any(bar.leave for bar in val_bars)  # validations at steps 4 and 8, cleared


def test_startup_notices_are_quiet_unless_verbose(monkeypatch, caplog):
    """Lightning's hardware notices are dropped; SEG_VERBOSE=1 brings them back; warnings always pass."""

    def notices() -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
            L.seed_everything(3)
            logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("a real problem")
        return caplog.text

    try:
        monkeypatch.delenv("SEG_VERBOSE", raising=False)
        quiet_lightning()
        text = notices()
        assert "GPU available" not in text and "TPU available" not in text and "Seed set to" not in text
        assert "a real problem" in text
        monkeypatch.setenv("SEG_VERBOSE", "1")
        quiet_lightning()
        text = notices()
        assert "GPU available: False" in text and "Seed set to 3" in text
    finally:
        monkeypatch.delenv("SEG_VERBOSE", raising=False)
        quiet_lightning()


def _wait_for_exit_record(path: Path) -> list:
    """wandb's service writes the offline file after finish() returns: read until its exit record is there."""
    deadline = time.monotonic() + 60
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_wandb_summary_keeps_the_best_miou(tmp_path, monkeypatch):
    """The W&B logger train.py builds: val/mIoU logged 0.2, 0.5, 0.3 leaves 0.5 (the best, not the last) in the
    run's summary, as written to the offline run file."""
    from seg.training.loggers import build_loggers, finish_wandb, run_identity

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wb" / var.lower()))
    monkeypatch.delenv("WANDB_NAME", raising=False)
    loggers = build_loggers(
        tmp_path / "run", "offline", identity=run_identity("danet", "resnet18", "folder", "data/demo", seed=7)
    )
    for step, value in enumerate((0.2, 0.5, 0.3)):
        loggers[1].log_metrics({"val/mIoU": value}, step=step)
    places = finish_wandb(loggers)
    (path,) = (tmp_path / "run/wandb").glob("offline-run-*/run-*.wandb")
    assert places == [f"W&B run danet-resnet18-s7 (offline); upload with: wandb sync {path.parent}"]
    assert run_identity("danet", "resnet18", "folder", "data/demo", seed=7)["tags"][2] == "dataset:demo"
    summary = {}
    for record in _wait_for_exit_record(path):
        if record.WhichOneof("record_type") == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
    assert summary["val/mIoU"] == {"max": 0.5}


def test_wandb_run_is_named_tagged_and_typed(tiny_data, tmp_path, monkeypatch):
    """train.py's W&B run (offline): named <head>-<backbone>-s<seed>, tagged head/backbone/dataset/seed, job type
    train, the seed at the top level of the config; WANDB_NAME, when set, names it instead."""
    import wandb

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wb" / var.lower()))
    monkeypatch.delenv("WANDB_NAME", raising=False)
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=1, val_check_interval=1)
    try:
        main(["--config", str(cfg), "--wandb=offline", "--seed_everything=3"])
    finally:
        wandb.finish()
    (path,) = (tmp_path / "run/wandb").glob("offline-run-*/run-*.wandb")
    (run,) = [r.run for r in _wait_for_exit_record(path) if r.WhichOneof("record_type") == "run"][:1]
    assert run.display_name == "fcn-resnet18-s3" and run.job_type == "train"
    assert list(run.tags) == ["head:fcn", "backbone:resnet18", f"dataset:{tiny_data.name}", "seed:3"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["seed"] == 3


def test_custom_cpu_config_trains_on_a_folder_dataset(tmp_path):
    """configs/custom_cpu.yaml (CPU, small crops and batch, 2 workers) trains 2 steps on a tiny folder dataset; the
    overrides are the data root, the weights (no download in tests), the budget, the run folder and, for the test's
    time, the sizes."""
    raw = yaml.safe_load((ROOT / "configs/custom_cpu.yaml").read_text())
    assert raw["trainer"]["accelerator"] == "cpu" and raw["data"]["num_workers"] <= 2
    assert raw["data"]["batch_size"] <= 4 and max(raw["data"]["crop_size"]) <= 256
    root = tmp_path / "custom"
    for split in ("train", "val"):
        folder_tree(root, split, n=4, size=(40, 56), values=[0, 1, 2, 255], classes=["a", "b", "c"])
    cli = main(
        [
            "--config",
            str(ROOT / "configs/custom_cpu.yaml"),
            f"--data.root={root}",
            "--model.weights=null",
            "--data.crop_size=[64,64]",
            "--data.scale=[64,96]",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.enable_progress_bar=false",
            "--wandb=off",
        ]
    )
    assert cli.trainer.global_step == 2 and cli.model.hparams.backbone == raw["model"]["backbone"]
    assert (tmp_path / "run/checkpoints/best.ckpt").is_file()


def test_readme_cpu_wheel_line_pins_the_constraints_versions():
    """The README's CPU-only install line names the torch / torchvision versions of constraints.txt."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line[:60])
    (line,) = [x for x in (ROOT / "README.md").read_text().splitlines() if "download.pytorch.org/whl/cpu" in x]
    assert f"torch=={pins['torch']} torchvision=={pins['torchvision']} --index-url" in line
