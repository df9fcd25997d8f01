"""train.py / SegCLI end to end on CPU: quickstart fast_dev_run, a short real run with checkpoints, exact
resume, W&B offline, fine-tuning with another class count, and 2-process CPU DDP (subprocesses: DDP
re-executes sys.argv). A tiny ResNet-18 on 48x48 synthetic scenes keeps every run to seconds.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import sys
import time

import lightning as L
import pytest
import torch
from helpers import ROOT, model_state, run_cmd, tiny_config

from seg.data.synthetic import write_demo
from seg.training.cli import SegCLI, main


def test_quickstart_fast_dev_run(tmp_path):
    """configs/quickstart.yaml as shipped (its model and recipe), one train and one val batch."""
    cli = main(
        [
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--trainer.fast_dev_run=true",
            f"--data.root={tmp_path / 'demo'}",
            f"--data.generate_demo={tmp_path / 'demo'}",
            "--data.num_workers=0",
            "--wandb=off",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.num_classes == 5  # linked from the data
    assert cli.model.class_names == ["sand", "grass", "concrete", "lake", "pool"]


def test_short_run_checkpoints_metrics_and_poly_lr(trained_run):
    ckpts = trained_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp files left
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6
    assert any(k.startswith("model.backbone.") for k in last["state_dict"])  # seg checkpoint layout
    assert (trained_run / "config.yaml").is_file()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["global_step"] == 6 and 0.0 <= summary["last"]["mIoU"] <= 1.0
    assert set(summary["last"]["per_class_IoU"]) == {"sand", "grass", "concrete", "lake", "pool"}
    assert summary["best"]["mIoU"] >= summary["last"]["mIoU"]
    # per-step CSV: losses and the poly LR, (0.02 - 1e-4) * (1 - t/5)^0.9 + 1e-4 at step t (mmengine PolyLR:
    # the last of the 6 iterations trains with min_lr)
    rows = list(csv.DictReader(open(glob.glob(str(trained_run / "csv/version_*/metrics.csv"))[0])))
    lrs = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    assert sorted(lrs) == list(range(6))
    for t, lr in lrs.items():
        assert lr == pytest.approx((0.02 - 1e-4) * (1 - t / 5) ** 0.9 + 1e-4, rel=1e-6)
    assert all(float(r["train/loss_aux"]) > 0 for r in rows if r.get("train/loss_aux"))
    val = [r for r in rows if r.get("val/mIoU")]
    assert [int(r["step"]) for r in val] == [2, 5]  # validations after steps 3 and 6 (0-based log step)
    assert float(val[-1]["val/mIoU"]) == pytest.approx(summary["last"]["mIoU"])


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_data, tmp_path):
    """`model.compile: true` trains through train.py (torch.compile of the network, fused loss outside it):
    same losses as eager to float tolerance, a seg-layout checkpoint (no `_orig_mod.` keys)."""
    losses = {}
    for compiled in (False, True):
        run = tmp_path / f"run_{compiled}"
        config = tiny_config(tmp_path / f"cfg_{compiled}.yaml", tiny_data, run, max_steps=2, val_check_interval=2)
        # no dropout: compiled code draws its masks from another RNG stream than eager, so with dropout the
        # two runs differ by chance (seen: 0.16 % at step 2), not by what this test checks
        main(["--config", str(config), f"--model.compile={str(compiled).lower()}", "--model.head_kwargs.dropout=0"])
        rows = list(csv.DictReader(open(glob.glob(str(run / "csv/version_*/metrics.csv"))[0])))
        losses[compiled] = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        keys = model_state(run / "checkpoints/last.ckpt")
        assert not any("_orig_mod" in k for k in keys) and any(k.startswith("model.head.") for k in keys)
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_resume_is_exact(tiny_data, tmp_path):
    """10 steps straight == 4 steps + `--ckpt_path last` + 6 steps, both with 2 data workers: same weights,
    optimizer state, LR, step and val mIoU. The resume point is mid-epoch (3 batches/epoch), the head has
    dropout, and training goes on after the first post-resume validation (step 8): creating the validation
    iterator must not shift the dropout RNG (it did when the val DataLoader drew its seed from the global RNG)."""
    common = ["--model.max_iters=10", "--trainer.val_check_interval=4", "--data.num_workers=2"]
    a = tiny_config(tmp_path / "a.yaml", tiny_data, tmp_path / "a", max_steps=10)
    main(["--config", str(a), *common])
    b = tiny_config(tmp_path / "b.yaml", tiny_data, tmp_path / "b", max_steps=4)
    main(["--config", str(b), *common])
    cli = main(["--config", str(b), *common, "--trainer.max_steps=10", "--ckpt_path=last"])
    assert cli.trainer.global_step == 10
    ca = torch.load(tmp_path / "a/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    cb = torch.load(tmp_path / "b/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ca["global_step"] == cb["global_step"] == 10
    differ = [k for k, v in ca["state_dict"].items() if not torch.equal(v, cb["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(ca['state_dict'])} tensors differ: {differ[:5]}"
    for sa, sb in zip(ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"] == 10
    sa = json.loads((tmp_path / "a/summary.json").read_text())["last"]
    sb = json.loads((tmp_path / "b/summary.json").read_text())["last"]
    assert sa["mIoU"] == sb["mIoU"]


class _RecordBatches(L.Callback):
    """The training batches as the model receives them."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({"path": list(batch["path"]), "image": batch["image"].clone()})


def test_data_seed_decides_the_training_batches(tiny_data, tmp_path):
    """train.py trains on the DataModule's batches: without data.seed they follow seed_everything (not the
    fallback 0), an explicit data.seed wins, and either way they equal a bare SegDataModule's with that seed
    (order and augmentation, with 2 workers in train.py and 0 in the bare one)."""
    from seg.data import SegDataModule

    def trained_batches(*args: str) -> list[dict]:
        cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=3, limit_val_batches=0)
        cli = SegCLI(args=["--config", str(cfg), *args])
        record = _RecordBatches()
        cli.trainer.callbacks.append(record)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # what main() runs
        return record.batches

    def bare_batches(seed: int) -> list[dict]:
        dm = SegDataModule("folder", str(tiny_data), batch_size=4, num_workers=0, crop_size=(32, 32), seed=seed)
        return [{"path": b["path"], "image": b["image"]} for b in dm.train_dataloader()]

    def same(a: list[dict], b: list[dict]) -> bool:
        return len(a) == len(b) and all(
            x["path"] == y["path"] and torch.equal(x["image"], y["image"]) for x, y in zip(a, b)
        )

    followed = trained_batches("--seed_everything=2", "--data.num_workers=2")  # data.seed unset
    assert len(followed) == 3 and same(followed, bare_batches(2)) and not same(followed, bare_batches(0))
    explicit = trained_batches("--seed_everything=2", "--data.seed=1")
    assert same(explicit, bare_batches(1))
    assert [b["path"] for b in explicit] != [b["path"] for b in followed]  # the order, not only the augmentation


def test_divergence_stops_with_one_error_and_no_nan_checkpoint(tiny_data, tmp_path, monkeypatch):
    """`--model.lr=1e6` as train.py runs it (command-line arguments): exit with one `error:` message naming the
    step and the learning rate (SystemExit with a message: exit code 1, no traceback), and no checkpoint or
    summary with NaN/Inf weights."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=8, val_check_interval=2)
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(cfg), "--model.lr=1e6"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    last = exit_info.value.code
    assert isinstance(last, str), last  # sys.exit(message): printed to stderr, exit code 1
    assert re.match(
        r"error: .* at step \d+ \(learning rate [\d.e+]+, base --model.lr=1e\+06\): the run diverged", last
    ), last
    step = int(re.search(r"at step (\d+)", last).group(1))
    for ckpt in (tmp_path / "run/checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["global_step"] < step
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()), ckpt
    summary = tmp_path / "run/summary.json"
    if summary.exists():
        assert json.loads(summary.read_text())["global_step"] < step


def test_broken_last_ckpt_and_bad_interval_give_one_clear_error(trained_run, tiny_data, tmp_path, capsys):
    """A 0-byte last.ckpt (e.g. a copy cut short) with `--ckpt_path last`: one error naming it and best.ckpt.
    `val_check_interval=0`: a parser error instead of a ZeroDivisionError mid-training."""
    import shutil

    from seg.models.safe_load import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    (run / "checkpoints/last.ckpt").write_bytes(b"")
    (run / "checkpoints/.last.ckpt.tmp999999999").write_bytes(b"partial")  # from a kill -9 mid-save
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, run, max_steps=8)
    with pytest.raises(
        CheckpointError,
        match=rf"--ckpt_path: {run}/checkpoints/last.ckpt is empty \(0 bytes\).*"
        rf"{run}/checkpoints/best.ckpt exists: resume from it",
    ):
        main(["--config", str(cfg), "--ckpt_path=last"])
    assert not (run / "checkpoints/.last.ckpt.tmp999999999").exists()  # cleaned up at start
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "--trainer.val_check_interval=0"])
    assert "trainer.val_check_interval=0: must be > 0" in capsys.readouterr().err


def test_unknown_mask_colour_stops_training_with_the_file_named(tmp_path, monkeypatch):
    """RGB palette masks with a colour outside the palette, loaded by 2 workers during train.py: one `error:`
    naming the file and the colour (not a worker traceback, not silent ignore pixels)."""
    import numpy as np
    from PIL import Image

    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            (tmp_path / f"data/{split}/images").mkdir(parents=True, exist_ok=True)
            (tmp_path / f"data/{split}/masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / f"data/{split}/images/{i}.png")
            mask = np.zeros((40, 40, 3), np.uint8)
            mask[:, 10:20], mask[:, 20:30] = palette[1], palette[2]
            if split == "train" and i == 2:
                mask[:5, :5] = (250, 0, 0)  # anti-aliasing / compression damage: close to red, not red
            Image.fromarray(mask).save(tmp_path / f"data/{split}/masks/{i}.png")
    (tmp_path / "data/classes.json").write_text(json.dumps({"classes": ["bg", "red", "blue"]}))
    cfg = tiny_config(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "run", max_steps=2, val_check_interval=2)
    monkeypatch.setattr(
        sys,
        "argv",
        ["train.py", "--config", str(cfg), "--data.num_workers=2", "--data.palette=[[0,0,0],[255,0,0],[0,0,255]]"],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message and "Traceback" not in message, message
    assert re.search(
        r"train/masks/2\.png: 25 pixels \(1\.56%\) have colours that are not in the palette: "
        r"\(250, 0, 0\): 25 px",
        message,
    ), message


def test_wandb_offline(tiny_data, tmp_path, monkeypatch):
    wb = tmp_path / "wandb_home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(wb / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=2, val_check_interval=2)
    import wandb

    try:
        main(["--config", str(cfg), "--wandb=auto"])
    finally:
        wandb.finish()
    runs = glob.glob(str(tmp_path / "run/wandb/offline-run-*"))
    assert len(runs) == 1, os.listdir(tmp_path / "run")
    data = glob.glob(os.path.join(runs[0], "run-*.wandb"))
    assert data
    # wandb's service process writes the offline file after wandb.finish() returns (seen: 7 bytes at first,
    # every record a moment later), so wait for it instead of reading once.
    keys = (b"val/mIoU", b"train/loss", b"train/lr", b"val/per_class", b"val/examples")
    deadline = time.monotonic() + 60
    while True:
        blob = open(data[0], "rb").read()
        missing = [k for k in keys if k not in blob]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{data[0]} ({len(blob)} bytes) lacks {missing}"


def test_finetune_init_from_other_class_count(trained_run, tmp_path):
    """init_from a 5-class run onto 3-class data: backbone/head convs load, the classifiers re-initialise."""
    root = tmp_path / "three"
    write_demo(root, splits={"train": 8, "val": 3}, size=48)
    meta = json.loads((root / "classes.json").read_text())
    meta.update(classes=["sand", "grass", "concrete"], palette=meta["palette"][:3])
    (root / "classes.json").write_text(json.dumps(meta))
    import cv2

    for m in sorted((root / "train/masks").glob("*.png")) + sorted((root / "val/masks").glob("*.png")):
        mask = cv2.imread(str(m), cv2.IMREAD_UNCHANGED)  # fold lake/pool (3, 4) into concrete: 3 classes
        mask[mask >= 3] = 2
        cv2.imwrite(str(m), mask)
    src = trained_run / "checkpoints/last.ckpt"
    cfg = tiny_config(tmp_path / "cfg.yaml", root, tmp_path / "run", max_steps=2, val_check_interval=2)
    cli = SegCLI(args=["--config", str(cfg), f"--model.init_from={src}", "--model.freeze_backbone=true"])
    module = cli.model
    assert module.hparams.num_classes == 3
    report = module.init_report
    mismatched = {s.split()[0] for s in report["shape_mismatch"]}
    assert mismatched and all(k.endswith(("weight", "bias")) for k in mismatched)
    assert mismatched == {
        "head.conv_seg.weight",
        "head.conv_seg.bias",
        "aux_head.conv_seg.weight",
        "aux_head.conv_seg.bias",
    }
    assert len(report["loaded"]) > 20 and not report["missing"]
    old = model_state(src)
    new = module.model.state_dict()
    for k in report["loaded"]:
        assert torch.equal(new[k], old["model." + k]), k
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    cli.trainer.fit(module, datamodule=cli.datamodule)
    after = module.model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed  # frozen: weights and BN stats unchanged
    assert json.loads((tmp_path / "run/summary.json").read_text())["num_classes"] == 3


def test_ddp_two_cpu_processes_match_single_process(tiny_data, tmp_path):
    """train.py with 2 gloo processes; its validation mIoU (7 images: 4 + 3 per rank) must equal a
    single-process evaluation of the same weights, and a 2-process seg.evaluate too."""
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=2, val_check_interval=2)
    run_cmd(["train.py", "--config", str(cfg), "--trainer.devices=2", "--trainer.strategy=ddp"])
    ddp_val = json.loads((tmp_path / "run/summary.json").read_text())["last"]
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    one_args = ["--output", str(tmp_path / "one.json"), "--report", str(tmp_path / "rep1")]
    run_cmd(["-m", "seg.evaluate", "--config", str(cfg), "--ckpt", str(ckpt), *one_args])
    run_cmd(
        [
            "-m",
            "seg.evaluate",
            "--config",
            str(cfg),
            "--ckpt",
            str(ckpt),
            "--output",
            str(tmp_path / "two.json"),
            "--report",
            str(tmp_path / "rep2"),
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.accelerator=cpu",
        ]
    )
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["num_images"] == two["num_images"] == ddp_val["num_images"] == 7
    assert two["world_size"] == 2
    for key in ("mIoU", "aAcc", "mAcc"):
        assert one[key] == two[key] == ddp_val[key], key
    assert one["per_class_IoU"] == two["per_class_IoU"]
    # seg.evaluate --report: the same report from 2 processes (confusion, intervals, worst images, calibration)
    rep1, rep2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("rep1", "rep2"))
    for key in ("mIoU", "per_class", "per_image", "confusion", "worst"):
        assert rep1[key] == rep2[key], key
    assert rep1["calibration"]["count"] == rep2["calibration"]["count"]
    assert rep2["ECE"] == pytest.approx(rep1["ECE"], abs=1e-9)  # fp32 probabilities of other batch pairings
