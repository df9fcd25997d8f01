"""seg.evaluate (metrics.json, whole/slide, multi-scale + flip) and seg.predict (masks), on a tiny trained run (the
`trained_run` fixture of test_cli). seg.compare: tests/test_compare.py."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from seg import evaluate as evaluate_cmd
from seg import predict as predict_cmd


def test_evaluate_writes_metrics_json(trained_run):
    result = evaluate_cmd.main(["--ckpt", str(trained_run / "checkpoints/best.ckpt")])  # config from the run dir
    metrics = json.loads((trained_run / "metrics.json").read_text())  # default output: <run_dir>/metrics.json
    assert metrics["mIoU"] == result["mIoU"]
    assert set(metrics["per_class_IoU"]) == {"sand", "grass", "concrete", "lake", "pool"}
    assert metrics["num_images"] == 7 and metrics["mode"] == "whole"
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    for key in ("mIoU", "aAcc", "mAcc"):  # evaluating best.ckpt reproduces its validation exactly
        assert metrics[key] == best[key], key


def test_evaluate_slide_multiscale_flip(trained_run, tmp_path):
    out = tmp_path / "m.json"
    evaluate_cmd.main(["--ckpt", str(trained_run / "checkpoints/last.ckpt"), "--output", str(out), "--mode", "slide",
                       "--crop_size", "[32, 32]", "--stride", "[16, 16]", "--scales", "[0.75, 1.0, 1.25]",
                       "--flip", "true"])
    m = json.loads(out.read_text())
    assert m["mode"] == "slide" and m["scales"] == [0.75, 1.0, 1.25] and m["flip"] and m["crop_size"] == [32, 32]
    assert m["val_mode"] == "full"  # TTA scales the original images (mmseg TestTimeAug)
    assert 0.0 <= m["mIoU"] <= 1.0 and m["num_images"] == 7


def test_predict_writes_masks_matching_evaluation(trained_run, tiny_data, tmp_path):
    ckpt = trained_run / "checkpoints/best.ckpt"
    written = predict_cmd.main(["--ckpt", str(ckpt), str(tiny_data / "val/images"), "--out", str(tmp_path)])
    assert len(written) == 7
    correct = total = 0
    for mask_path in written:
        pred = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(tiny_data / "val/masks" / mask_path.name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == gt.shape and pred.max() < 5
        assert (tmp_path / f"{mask_path.stem}_color.png").is_file()
        assert (tmp_path / f"{mask_path.stem}_overlay.jpg").is_file()
        correct += int((pred == gt).sum())
        total += gt.size
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    assert correct / total == pytest.approx(best["aAcc"], abs=1e-9)  # same predictions as the validation
