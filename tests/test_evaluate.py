"""seg.evaluate (metrics.json, whole/slide, multi-scale + flip) and seg.predict (masks), on a tiny trained run (the
`trained_run` fixture of test_cli). seg.compare: tests/test_compare.py."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import network_by_hand
from PIL import Image

from seg import evaluate as evaluate_cmd
from seg import predict as predict_cmd
from seg.deploy.geometry import tta_size
from seg.models.inference import predict_probs
from seg.training.tool_cli import build_module

IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # mmseg's data_preprocessor


def test_evaluate_writes_metrics_json(trained_run, capsys):
    result = evaluate_cmd.main(["--ckpt", str(trained_run / "checkpoints/best.ckpt")])  # settings from the checkpoint
    metrics = json.loads((trained_run / "metrics.json").read_text())  # default output: <run_dir>/metrics.json
    printed = capsys.readouterr().out  # in % as train.py's closing block (mmseg's unit), with the per-class table
    assert f"mIoU {100 * metrics['mIoU']:.2f}%  aAcc {100 * metrics['aAcc']:.2f}%" in printed
    for name, iou in metrics["per_class_IoU"].items():
        shown = "-" if iou is None else f"{100 * iou:.2f}"
        assert re.search(rf"^  {name} +{re.escape(shown)} ", printed, re.M), name
    assert metrics["mIoU"] == result["mIoU"]
    assert set(metrics["per_class_IoU"]) == {"sand", "grass", "concrete", "lake", "pool"}
    assert metrics["num_images"] == 7 and metrics["mode"] == "whole"
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    for key in ("mIoU", "aAcc", "mAcc"):  # evaluating best.ckpt reproduces its validation exactly
        assert metrics[key] == best[key], key


def test_evaluate_slide_multiscale_flip(trained_run, tiny_data, tmp_path):
    args = [
        "--ckpt",
        str(trained_run / "checkpoints/last.ckpt"),
        "--output",
        str(tmp_path / "m.json"),
        "--mode",
        "slide",
        "--crop_size",
        "[32, 32]",
        "--stride",
        "[16, 16]",
        "--scales",
        "[0.75, 1.0, 1.25]",
        "--flip",
        "true",
    ]
    evaluate_cmd.main(args)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["mode"] == "slide" and m["scales"] == [0.75, 1.0, 1.25] and m["flip"] and m["crop_size"] == [32, 32]
    assert m["val_mode"] == "full"  # TTA scales the original images (mmseg TestTimeAug)
    assert m["num_images"] == 7
    # an independent computation of the same protocol: sliding windows written out, TTA by hand, numpy IoU
    net = network_by_hand(trained_run / "checkpoints/last.ckpt")
    settings = {"eval_mode": "slide", "eval_crop_size": (32, 32), "eval_stride": (16, 16), "eval_flip": True}
    module, _ = build_module(trained_run / "checkpoints/last.ckpt", {**settings, "eval_scales": (0.75, 1.0, 1.25)})
    s = module.eval_settings  # the settings the command evaluates with
    conf = np.zeros((5, 5), np.int64)
    for image_path in sorted((tiny_data / "val/images").iterdir()):
        x = _normalised(image_path)
        probs = _tta_slide_probs(net, x, scales=(0.75, 1.0, 1.25), crop=(32, 32), stride=(16, 16))
        with torch.no_grad():
            ours = predict_probs(module.logits, x, s.num_classes, s.mode, s.crop_size, s.stride, s.scales, s.flip)
            torch.testing.assert_close(ours, probs, atol=1e-5, rtol=1e-4)
        pred = probs.argmax(1)[0].numpy()
        gt = cv2.imread(str(tiny_data / "val/masks" / image_path.name), cv2.IMREAD_UNCHANGED).astype(np.int64)
        valid = gt < 5
        conf += np.bincount(gt[valid] * 5 + pred[valid], minlength=25).reshape(5, 5)
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert m["mIoU"] == pytest.approx(float(np.nanmean(iou)), abs=2e-4)  # 2e-4: a pixel or two of fp ties
    assert m["aAcc"] == pytest.approx(float(np.diag(conf).sum() / conf.sum()), abs=1e-4)


def test_predict_writes_masks_matching_evaluation(trained_run, tiny_data, tmp_path):
    ckpt = trained_run / "checkpoints/best.ckpt"
    written = predict_cmd.main(["--ckpt", str(ckpt), str(tiny_data / "val/images"), "--out", str(tmp_path)])
    assert len(written) == 7
    correct = total = 0
    for mask_path in written:
        pred = np.asarray(Image.open(mask_path))  # a palette PNG: PIL gives the indices
        gt = cv2.imread(str(tiny_data / "val/masks" / mask_path.name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == gt.shape and pred.max() < 5
        assert (tmp_path / f"{mask_path.stem}_color.png").is_file()
        assert (tmp_path / f"{mask_path.stem}_overlay.jpg").is_file()
        correct += int((pred == gt).sum())
        total += gt.size
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    assert correct / total == pytest.approx(best["aAcc"], abs=1e-9)  # same predictions as the validation


def _slide(net, x, crop, stride):
    """mmseg's slide_inference written out: windows every `stride`, the last one aligned to the border, logits of
    overlapping windows averaged."""
    (h, w), (ch, cw), (sh, sw) = x.shape[-2:], crop, stride
    logits, count = torch.zeros(1, 5, h, w), torch.zeros(1, 1, h, w)
    for i in range(max(h - ch + sh - 1, 0) // sh + 1):
        for j in range(max(w - cw + sw - 1, 0) // sw + 1):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits[..., y1:y2, x1:x2] += net(x[..., y1:y2, x1:x2])["out"]
            count[..., y1:y2, x1:x2] += 1
    return logits / count


def _normalised(image_path) -> torch.Tensor:
    rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    x = torch.from_numpy((rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32))
    return x.permute(2, 0, 1)[None]  # (1, 3, H, W)


@torch.no_grad()
def _tta_slide_probs(net, x, scales, crop, stride) -> torch.Tensor:
    """mmseg TestTimeAug: each scale of the original image, with and without flip, softmax at the original size,
    averaged."""
    h, w = x.shape[-2:]
    probs = torch.zeros(1, 5, h, w)
    for scale in scales:
        xs = F.interpolate(x, size=tta_size((h, w), scale), mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = _slide(net, xs.flip(-1) if flip else xs, crop, stride)
            logits = logits.flip(-1) if flip else logits
            probs += F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
    return probs / (2 * len(scales))


def test_cpu_inference_optimisation_keeps_the_predictions(trained_run, tiny_data, tmp_path, monkeypatch):
    """seg.evaluate / seg.predict fold BatchNorm etc. on CPU by default (--optimize): the same metrics as the plain
    model; --bf16 predictions stay close to fp32 ones."""
    ckpt = str(trained_run / "checkpoints/best.ckpt")
    plain = evaluate_cmd.main(["--ckpt", ckpt, "--optimize", "false", "--output", str(tmp_path / "plain.json")])
    opt = evaluate_cmd.main(["--ckpt", ckpt, "--output", str(tmp_path / "opt.json")])
    assert opt["optimize"] and not plain["optimize"] and opt["params"] == plain["params"]
    for key in ("mIoU", "aAcc", "mAcc"):
        assert opt[key] == pytest.approx(plain[key], abs=1e-4), key
    images = str(tiny_data / "val/images")
    monkeypatch.setenv("SEG_FORCE_BF16", "1")  # bf16 even on a CPU without native bf16 (else it runs fp32)
    fp32 = predict_cmd.main(["--ckpt", ckpt, images, "--out", str(tmp_path / "fp32")])
    bf16 = predict_cmd.main(["--ckpt", ckpt, images, "--out", str(tmp_path / "bf16"), "--bf16", "true"])
    agree = [np.mean(np.asarray(Image.open(a)) == np.asarray(Image.open(b))) for a, b in zip(fp32, bf16)]
    assert np.mean(agree) > 0.9, agree
