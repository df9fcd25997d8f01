"""seg.compare: per-image counts, the paired bootstrap (against a loop implementation and metrics_from_confmat),
verdicts, and ``--train`` over heads x seeds end to end on tiny data (compare.md/.png/.json, W&B group)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_config, write_mask, write_rgb

from seg.compare import cli, report, stats
from seg.evaluate import main as evaluate_cmd_main
from seg.evaluation import Scores, metrics_from_confmat, miou_from_counts
from seg.training.loggers import build_loggers


def _synthetic_counts(rng: np.random.Generator, seeds: int, images: int, classes: int, acc: float) -> np.ndarray:
    """(S, N, 3, C) counts of a fake predictor that labels a pixel right with probability ~acc."""
    out = np.zeros((seeds, images, 3, classes), np.int64)
    for s in range(seeds):
        for i in range(images):
            gt = rng.integers(0, classes, 400)
            wrong = rng.random(400) > acc + rng.normal(0, 0.03)  # per-image difficulty
            pred = np.where(wrong, rng.integers(0, classes, 400), gt)
            cm = np.zeros((classes, classes), np.int64)
            np.add.at(cm, (gt, pred), 1)
            out[s, i] = [np.diag(cm), cm.sum(1), cm.sum(0)]
    return out


def test_per_image_counts_sum_to_confusion_matrix_metrics():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (3, 9, 7))
    target[0, :2] = 255  # ignored pixels
    preds = torch.randint(0, 4, (3, 9, 7))
    scores = Scores(4)
    scores.update(preds, target, ["b", "c", "a"])  # per image, sorted by path
    counts = scores.sync().counts[[1, 2, 0]]  # (3, 3, 4) back in batch order
    for b in range(3):  # each image against a direct count
        keep = target[b] != 255
        for c in range(4):
            t, p = target[b][keep] == c, preds[b][keep] == c
            assert counts[b, :, c].tolist() == [int((t & p).sum()), int(t.sum()), int(p.sum())]
    cm = torch.zeros(4, 4, dtype=torch.long)
    keep = target != 255
    cm.index_put_((target[keep], preds[keep]), torch.ones(int(keep.sum()), dtype=torch.long), accumulate=True)
    assert torch.equal(scores.confmat, cm)
    assert miou_from_counts(counts.sum(0)) == pytest.approx(float(metrics_from_confmat(cm)["mIoU"]), abs=1e-12)


def test_bootstrap_matches_loop_implementation():
    rng = np.random.default_rng(1)
    counts = _synthetic_counts(rng, seeds=3, images=11, classes=4, acc=0.7)
    image_idx, seed_idx = stats.bootstrap_draws(11, {"a": 3}, samples=25, seed=5)
    fast = stats.bootstrap_miou(counts, image_idx, seed_idx["a"])
    for b in range(25):  # literal resampling: concatenate the drawn images, average the drawn seeds
        per_seed = []
        for s in seed_idx["a"][b]:
            cm_sum = sum(counts[s, i] for i in image_idx[b])  # (3, C)
            tp, gt, pred = cm_sum
            per_seed.append(np.mean(tp / (gt + pred - tp)))
        assert fast[b] == pytest.approx(np.mean(per_seed), abs=1e-12)


def test_identical_heads_within_noise_and_clear_differences_detected():
    rng = np.random.default_rng(2)
    base = _synthetic_counts(rng, 3, 30, 5, acc=0.75)
    better = _synthetic_counts(rng, 3, 30, 5, acc=0.85)
    worse = _synthetic_counts(rng, 3, 30, 5, acc=0.65)
    res = stats.compare_to_baseline(
        {"fcn": base, "same": base.copy(), "better": better, "worse": worse}, "fcn", samples=500
    )
    same = res["same"]
    assert same["diff"] == 0 and same["ci_low"] <= 0 <= same["ci_high"] and same["verdict"] == "within noise"
    assert res["better"]["verdict"] == "better" and res["better"]["ci_low"] > 0
    assert res["worse"]["verdict"] == "worse" and res["worse"]["ci_high"] < 0
    assert res["fcn"]["verdict"] == "baseline"
    point = np.mean(miou_from_counts(better.sum(1))) - np.mean(miou_from_counts(base.sum(1)))
    assert res["better"]["diff"] == pytest.approx(point)
    with pytest.raises(ValueError, match="baseline head 'x'"):
        stats.compare_to_baseline({"fcn": base}, "x")


def test_wandb_group_passed_to_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_GROUP", "cmp-1")
    loggers = build_loggers(tmp_path / "run", "offline")
    wandb_logger = loggers[-1]
    assert wandb_logger._wandb_init["group"] == "cmp-1"  # not started: no W&B run is created here


def test_compare_trains_heads_x_seeds(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "unused", max_steps=2, val_check_interval=2)
    out = tmp_path / "cmp"
    result = cli.main(
        [
            "--train",
            "--config",
            str(cfg),
            "--heads",
            "fcn",
            "danet",
            "--seeds",
            "2",
            "--first_seed",
            "3",  # seeds 3 and 4: a replication with other seeds
            "--out",
            str(out),
            "--bootstrap",
            "200",
            "--",
            "--data.num_workers=0",
            "--wandb=off",
        ]
    )
    data = json.loads((out / "compare.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert sorted((r["head"], r["seed"]) for r in data["runs"]) == [("danet", 3), ("danet", 4), ("fcn", 3), ("fcn", 4)]
    for r in data["runs"]:  # per-run mIoU from the per-image counts == the run's own final validation
        summary = json.loads((out / f"{r['head']}-s{r['seed']}" / "summary.json").read_text())
        assert summary["global_step"] == 2
        assert r["mIoU"] == pytest.approx(summary["last"]["mIoU"], abs=1e-9)
        assert r["gflops"] > 0 and r["params"] > 0 and r["peak_mem_mb"] > 0 and r["eval_img_s"] > 0
    for head in ("fcn", "danet"):
        h = data["heads"][head]
        m = [r["mIoU"] for r in data["runs"] if r["head"] == head]
        assert h["n"] == 2 and h["mIoU_mean"] == pytest.approx(np.mean(m))
        assert h["mIoU_std"] == pytest.approx(np.std(m, ddof=1))
    d = data["heads"]["danet"]["vs_baseline"]
    assert d["ci_low"] <= d["diff"] <= d["ci_high"] and d["verdict"] in stats.VERDICTS
    p = data["provenance"]  # what the runs recorded, where it ran, and what nobody recorded
    cfg_data = yaml.safe_load(cfg.read_text())["data"]
    assert p["steps"] == 2 and p["seeds"] == [3, 4] and p["backbone"] == data["runs"][0]["backbone"]
    assert p["data_root"] == str(cfg_data["root"]) and p["num_images"] == data["runs"][0]["num_images"]
    assert p["output_stride"] == yaml.safe_load(cfg.read_text())["model"].get("output_stride", 8)
    assert p["train_device"] == ("cuda" if torch.cuda.is_available() else "cpu") and p["machine"]["cpu"]
    assert p["missing"] == [k for k in sorted(p) if p[k] is None]
    md = (out / "compare.md").read_text()
    assert md.startswith("2 heads × 2 seeds each, baseline fcn: fcn, danet")
    assert "Δ vs fcn [95% CI]" in md and "| danet | 2 |" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summary goes to W&B once, into the comparison's group (a stand-in wandb module records the calls)
    logged: dict = {}

    class FakeRun:
        def log(self, d):
            logged.update(d)

        def finish(self):
            logged["finished"] = True

    spec = importlib.util.find_spec("wandb")
    fake = types.SimpleNamespace(
        __spec__=spec,
        Table=lambda columns, data: (columns, data),
        Image=lambda p: p,
        init=lambda **kw: logged.update(init=kw) or FakeRun(),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    report.log_wandb_summary(result, out, "g1", "seg", "offline")
    assert logged["init"]["group"] == "g1" and logged["init"]["name"] == "g1/summary" and logged["finished"]
    columns, rows = logged["compare/table"]
    assert sorted(r[0] for r in rows) == ["danet", "fcn"] and columns[:4] == ["head", "n", "mIoU_mean", "mIoU_std"]
    # every run's seg.evaluate --report: its folder, ECE and two charts in the summary
    columns, rows = logged["compare/runs"]
    assert columns[-1] == "ECE" and len(rows) == 4 and all(0 <= r[-1] <= 1 for r in rows)
    for r in data["runs"]:
        rep = json.loads((out / r["name"] / "report/report.json").read_text())
        assert rep["mIoU"] == pytest.approx(r["mIoU"], abs=1e-9) and rep["ECE"] == r["ECE"]
        for chart in ("confusion", "reliability"):
            assert logged[f"report/{r['name']}/{chart}"] == str(out / r["name"] / f"report/{chart}.png")


def test_compare_scores_resize_mode_data_as_evaluate_and_validation(tmp_path):
    """ADE20K-style scoring on odd sizes (the image resized to the test scale, the mask kept at its original size),
    and a budget below val_check_interval (train.py validates once more at its last step): seg.compare's mIoU of a
    run equals seg.evaluate's of the same last.ckpt and the validation mIoU the run logged at that step."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, sizes in (("train", [(40, 40)] * 4), ("val", [(37, 53), (41, 29), (29, 45)])):
        for i, (h, w) in enumerate(sizes):
            write_rgb(root / split / "images" / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            mask = np.zeros((h, w), np.uint8)
            mask[: h // 2] = 1
            mask[:, : w // 3] = 2
            write_mask(root / split / "masks" / f"{i}.png", mask)
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    cfg = tiny_config(tmp_path / "cfg.yaml", root, tmp_path / "run", max_steps=3, val_check_interval=10)
    c = yaml.safe_load(cfg.read_text())
    c["data"].update(scale=[24, 40], val_batch_size=2, crop_size=[24, 24])  # mixed sizes in one val batch too
    cfg.write_text(yaml.safe_dump(c))
    from seg.training.cli import main as train_main

    train_main(["--config", str(cfg)])
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["last"]["step"] == 3  # validated at the end
    evaluated = evaluate_cmd_main(["--ckpt", str(run / "checkpoints/last.ckpt"), "--output", str(tmp_path / "m.json")])
    result = cli.main([str(run), "--baseline", "fcn", "--out", str(tmp_path / "cmp"), "--bootstrap", "50"])
    (r,) = result["runs"]
    assert r["mIoU"] == pytest.approx(evaluated["mIoU"], abs=1e-9)
    assert r["mIoU"] == pytest.approx(summary["last"]["mIoU"], abs=1e-9)
    assert r["steps"] == 3 and r["seed"] == 0 and r["num_images"] == 3
