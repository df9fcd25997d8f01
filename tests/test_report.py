"""seg.evaluate --report: report.json against metrics.json of the same run and against independent numpy
computations (confusion counts from the mask files, ECE and the worst images from seg.load(...).predict(probs)),
the self-contained HTML, the legibility of the confusion figure at 19 and 150 classes, and a headless Chromium
render where Chromium is installed. The report under 2 DDP processes: test_cli's DDP test."""

from __future__ import annotations

import csv
import html.parser
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import seg
from seg import evaluate as evaluate_cmd
from seg.report import figures

BINS = 15


@pytest.fixture(scope="module")
def report_run(trained_run, tmp_path_factory):
    """One ``seg.evaluate --report`` of the tiny run's best.ckpt: (metrics.json, report folder, checkpoint)."""
    out = tmp_path_factory.mktemp("report")
    ckpt = trained_run / "checkpoints/best.ckpt"
    args = ["--ckpt", str(ckpt), "--output", str(out / "metrics.json"), "--report", str(out / "rep")]
    evaluate_cmd.main([*args, "--report_worst", "3", "--trainer.enable_progress_bar=false"])
    return json.loads((out / "metrics.json").read_text()), out / "rep", ckpt


def _masks(tiny_data: Path) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)).astype(np.int64) for p in sorted((tiny_data / "val/masks").iterdir())}


def test_report_numbers_equal_metrics_json_and_mask_counts(report_run, tiny_data):
    metrics, rep, _ = report_run
    report = json.loads((rep / "report.json").read_text())
    for key in ("mIoU", "aAcc", "mAcc", "per_class_IoU", "per_class_Acc", "num_images"):
        assert report[key] == metrics[key], key
    assert report["ECE"] == metrics["ECE"]
    names = list(metrics["per_class_IoU"])
    with open(rep / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == names and [r[0] for r in rows[1:]] == names
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    gt = np.zeros(len(names), np.int64)  # labelled pixels per class, counted from the mask files
    for mask in _masks(tiny_data).values():
        gt += np.bincount(mask[mask != 255], minlength=len(names))
    assert counts.sum() == gt.sum() > 0
    assert counts.sum(1).tolist() == gt.tolist()
    assert report["confusion"]["counts"] == counts.tolist()
    assert [c["gt_pixels"] for c in report["per_class"]] == gt.tolist()
    for c in report["per_class"]:  # the interval holds the point estimate
        if c["ci_low"] is not None:
            assert c["ci_low"] - 1e-12 <= c["IoU"] <= c["ci_high"] + 1e-12, c
    assert len(report["per_image"]) == metrics["num_images"] == 7


def test_ece_and_worst_images_equal_an_independent_computation(report_run, tiny_data):
    _, rep, ckpt = report_run
    report = json.loads((rep / "report.json").read_text())
    model = seg.load(ckpt, device="cpu")
    count, conf_sum, correct = np.zeros(BINS), np.zeros(BINS), np.zeros(BINS)
    per_image = []
    for name, mask in _masks(tiny_data).items():
        image = np.array(Image.open(tiny_data / "val/images" / name).convert("RGB"))
        probs = np.asarray(model.predict(image, output="probs"), dtype=np.float64)  # (C, H, W)
        pred, conf = probs.argmax(0), probs.max(0)
        keep = mask != 255
        b = np.clip(np.ceil(conf[keep] * BINS).astype(int) - 1, 0, BINS - 1)  # bins (k/15, (k+1)/15]
        count += np.bincount(b, minlength=BINS)
        conf_sum += np.bincount(b, weights=conf[keep], minlength=BINS)
        correct += np.bincount(b, weights=(pred[keep] == mask[keep]), minlength=BINS)
        ious = []
        for c in range(probs.shape[0]):
            t, p = (mask == c) & keep, (pred == c) & keep
            if (t | p).any():
                ious.append((t & p).sum() / (t | p).sum())
        per_image.append((float(np.mean(ious)), str(tiny_data / "val/images" / name)))
    ece = np.abs(correct - conf_sum).sum() / count.sum()
    assert report["calibration"]["count"] == count.astype(int).tolist()
    assert report["ECE"] == pytest.approx(ece, abs=1e-6)
    worst = sorted(per_image)[:3]
    assert [Path(w["path"]).name for w in report["worst"]] == [Path(p).name for _, p in worst]
    assert [w["mIoU"] for w in report["worst"]] == pytest.approx([m for m, _ in worst], abs=1e-9)
    for w in report["worst"]:
        assert (rep / w["panel"]).is_file()


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href") and v is not None]


def test_report_html_is_self_contained(report_run):
    _, rep, _ = report_run
    text = (rep / "report.html").read_text()
    parser = _Refs()
    parser.feed(text)
    parser.close()
    report = json.loads((rep / "report.json").read_text())
    images = [v for tag, k, v in parser.refs if tag == "img"]
    assert len(images) == 4 + len(report["worst"]) == 7  # confusion, IoU, histogram, reliability + 3 panels
    assert all(v.startswith("data:image/png;base64,") for v in images)
    links = [v for tag, k, v in parser.refs if tag != "img"]
    assert links and all((rep / v).is_file() for v in links), links
    assert "http://" not in text and "https://" not in text and "//" not in "".join(links)
    for key in ("mIoU", "ECE"):
        assert f"{100 * report[key]:.2f} %" in text


def _drawn_ticklabels(ax, axis: str) -> list:
    """The tick labels matplotlib draws: those of ticks inside the view (out-of-view ticks keep labels too)."""
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    ticks, labels = getattr(ax, f"get_{axis}ticks")(), getattr(ax, f"get_{axis}ticklabels")()
    return [t for v, t in zip(ticks, labels) if lo - 1e-9 <= v <= hi + 1e-9 and t.get_visible() and t.get_text()]


def _check_legible(fig) -> None:
    """Every drawn text >= 7 pt and inside the figure, and no two tick labels of an axis overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    assert width <= 16 and height <= 20, (width, height)
    page = fig.bbox
    ticks = {id(t) for ax in fig.axes for a in "xy" for t in getattr(ax, f"get_{a}ticklabels")()}
    drawn = [t for ax in fig.axes for a in "xy" for t in _drawn_ticklabels(ax, a)]
    texts = fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontsize"))
    drawn += [t for t in texts if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    assert drawn
    for t in drawn:
        assert t.get_fontsize() >= figures.MIN_FONT, (t.get_text(), t.get_fontsize())
        box = t.get_window_extent(renderer)
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, t.get_text()
        assert box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1, t.get_text()
    for ax in fig.axes:
        for a in "xy":
            boxes = [t.get_window_extent(renderer) for t in _drawn_ticklabels(ax, a)]
            for b1, b2 in zip(boxes, boxes[1:]):
                assert not b1.overlaps(b2), (b1, b2)


def test_confusion_figure_is_legible_at_19_and_150_classes():
    rng = np.random.default_rng(0)
    for c in (19, 150):
        gt = rng.integers(0, c, 200_000)
        pred = np.where(rng.random(gt.size) < 0.7, gt, (gt + rng.integers(1, 4, gt.size)) % c)
        confmat = np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)
        names = [f"class_{i:03d}" for i in range(c)]
        fig, layout = figures.confusion_figure(confmat, names)
        _check_legible(fig)
        if c == 19:
            assert layout == "matrix"
            continue
        assert layout == "top"
        shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        norm = confmat / confmat.sum(1, keepdims=True)  # the 30 largest off-diagonal shares, computed directly
        np.fill_diagonal(norm, -1)
        flat = np.argsort(-norm, axis=None, kind="stable")[: figures.TOP_CONFUSIONS]
        expect = {f"{names[i // c]} → {names[i % c]}" for i in flat}
        assert len(shown) == figures.TOP_CONFUSIONS and set(shown) == expect


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium / chromium-browser is not on PATH")
def test_report_renders_in_headless_chromium(report_run, tmp_path):
    _, rep, _ = report_run
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}", "--window-size=1200,3000"]
    subprocess.run([*cmd, (rep / "report.html").resolve().as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.array(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (3000, 1200)
    assert pixels.std() > 10  # not a blank page
    assert (pixels[:1500] < 128).mean() > 0.01  # text and charts drawn in the upper half


def test_class_iou_interval_equals_literal_resampling():
    from seg.evaluation import class_iou_interval

    rng = np.random.default_rng(3)
    gt_px = rng.integers(0, 50, (9, 4))
    gt_px[:, 3] = 0  # a class never in the ground truth ...
    counts = np.stack([rng.integers(0, gt_px + 1), gt_px, gt_px + rng.integers(0, 20, (9, 4))], axis=1)  # (N, 3, C)
    counts[:, 2, 3] = 0  # ... nor predicted: no IoU, no interval
    low, high = class_iou_interval(counts, samples=40, confidence=0.9, seed=7)
    draws = np.random.default_rng(7).integers(0, 9, (40, 9))  # the same draws, each resample summed image by image
    reps = []
    for d in draws:
        tp, gt, pred = sum(counts[i] for i in d)[:, :3]
        reps.append(tp / (gt + pred - tp))
    reps = np.array(reps)
    np.testing.assert_allclose(low[:3], np.quantile(reps, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(high[:3], np.quantile(reps, 0.95, axis=0), atol=1e-12)
    assert np.isnan(low[3]) and np.isnan(high[3])


def test_confidence_is_the_top_probability_and_labels_do_not_change():
    """predict_labels(confidence=True): the same labels, and the largest of predict_probs' (averaged with TTA)
    probabilities; single pass and slide + scales + flip."""
    import torch

    from seg.models.inference import EvalSettings, predict_labels, predict_probs

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 21, 27)
    for s in (
        EvalSettings(4),
        EvalSettings(4, mode="slide", crop_size=(16, 16), stride=(8, 8), scales=(0.75, 1.0), flip=True),
    ):
        with torch.no_grad():
            labels, conf = predict_labels(conv, x, s, (25, 31), confidence=True)
            probs = predict_probs(conv, x, 4, s.mode, s.crop_size, s.stride, s.scales, s.flip, (25, 31))
            assert torch.equal(labels, predict_labels(conv, x, s, (25, 31)))
        assert torch.equal(labels, probs.argmax(1))
        torch.testing.assert_close(conf, probs.amax(1), atol=1e-6, rtol=1e-6)
