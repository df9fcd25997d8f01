"""compare.png and compare.md's header, from a synthetic comparison (no training): one colour per head in every
panel, costs as ratios to the baseline on axes from 0, the provenance in the title, a memory panel, CPU throughput
marked, and no text outside the figure or a verdict outside its panel."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.text import Text

from seg.compare import chart, report, stats

HEADS = ["fcn", "psp", "danet", "nonlocal", "ccnet", "axial"]
CLASSES = ["background", "sand", "grass", "lake", "pool"]


def _counts(rng: np.random.Generator, images: int, acc: float) -> np.ndarray:
    """(N, 3, C) per-image counts of a predictor right with probability ~acc."""
    out = np.zeros((images, 3, len(CLASSES)), np.int64)
    for i in range(images):
        gt = rng.integers(0, len(CLASSES), 300)
        pred = np.where(rng.random(300) > acc, rng.integers(0, len(CLASSES), 300), gt)
        for k, v in enumerate((gt[gt == pred], gt, pred)):
            out[i, k] = np.bincount(v, minlength=len(CLASSES))
    return out


def _result(heads=HEADS, seeds=3, device="cpu") -> dict:
    """A comparison as seg.compare writes it (stats.summarize of synthetic runs, plus provenance)."""
    rng = np.random.default_rng(0)
    runs = []
    for j, h in enumerate(heads):
        for s in range(seeds):
            counts = _counts(rng, 12, 0.6 + 0.03 * j)
            total = counts.sum(0)
            iou = total[0] / (total[1] + total[2] - total[0])
            runs.append(
                {
                    "run": f"/r/{h}-s{s}",
                    "name": f"{h}-s{s}",
                    "head": h,
                    "backbone": "resnet18",
                    "seed": s,
                    "steps": 400,
                    "mIoU": float(stats.miou_from_counts(total)),
                    "aAcc": 0.9,
                    "per_class_IoU": dict(zip(CLASSES, map(float, iou))),
                    "params": 13.2e6 + 1e5 * j,
                    "gflops": 3.81 + 0.005 * j,  # 0.6 % apart at most: an auto-zoomed axis would blow this up
                    "crop_size": [96, 96],
                    "train_img_s": 8.0 + rng.normal(0, 1.5),
                    "eval_img_s": 60.0 + rng.normal(0, 5),
                    "peak_mem_mb": 1500.0 + 10 * j + s,
                    "peak_mem_kind": "cuda" if device == "cuda" else "rss",
                    "train_device": device,
                    "eval_device": device,
                    "num_images": 12,
                    "_counts": counts,
                    "_paths": [f"{i}.png" for i in range(12)],
                }
            )
    result = stats.summarize(runs, "fcn", samples=200)
    result["provenance"] = {
        "backbone": "resnet18",
        "output_stride": 8,
        "steps": 400,
        "seeds": list(range(seeds)),
        "dataset": "folder",
        "data_root": "data/demo",
        "num_images": 12,
        "train_device": device,
        "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "gpu": None},
        "date": "2026-12-07T01:00:00+00:00",
        "seg_commit": "abc1234",
    }
    return result


@pytest.fixture(scope="module")
def drawn():
    result = _result()
    fig = chart.figure(result)
    fig.canvas.draw()
    yield result, fig
    plt.close(fig)


def _panel(fig, word):
    (ax,) = [a for a in fig.axes if word in a.get_title()]
    return ax


def test_one_colour_per_head_in_every_panel(drawn):
    result, fig = drawn
    colors = chart.head_colors(HEADS)
    assert colors == chart.head_colors(list(reversed(HEADS)))  # fixed by the names, not their order
    assert len({mcolors.to_hex(c) for c in colors.values()}) == len(HEADS)
    legend = {
        t.get_text(): mcolors.to_hex(p.get_facecolor())
        for p, t in zip(fig.legends[0].get_patches(), fig.legends[0].get_texts())
    }
    for h in HEADS:
        assert legend[h] == mcolors.to_hex(colors[h])
    tick_panels = 0
    seen = {}  # panel title -> heads drawn in it; every per-head artist carries its head as label
    for ax in fig.axes:
        for c in ax.containers:  # bars (filled: face colour; hollow CPU throughput: edge colour), error bars
            if c.get_label() in colors:
                if isinstance(c, BarContainer):
                    got = {
                        mcolors.to_hex(p.get_edgecolor() if p.get_facecolor()[3] == 0 else p.get_facecolor()) for p in c
                    }
                else:
                    got = {mcolors.to_hex(c.lines[0].get_color())}
                assert got == {mcolors.to_hex(colors[c.get_label()])}, (ax.get_title(), c.get_label())
                seen.setdefault(ax.get_title(), set()).add(c.get_label())
        for coll in ax.collections:  # the seed dots
            if coll.get_label() in colors:
                assert mcolors.to_hex(coll.get_facecolor()[0], keep_alpha=False) == mcolors.to_hex(
                    colors[coll.get_label()]
                )
        names = [lab.get_text().split(" ")[0] for lab in ax.get_yticklabels()]
        if set(names) == set(HEADS):  # per-head panels: tick label colour = head colour
            tick_panels += 1
            for lab, h in zip(ax.get_yticklabels(), names):
                assert mcolors.to_hex(lab.get_color()) == mcolors.to_hex(colors[h])
    assert tick_panels == 3 and len(seen) == 6 and all(heads >= set(HEADS) - {"fcn"} for heads in seen.values())


def test_costs_are_ratios_to_the_baseline_on_axes_from_zero(drawn):
    result, fig = drawn
    pareto = _panel(fig, "against GFLOPs")
    assert pareto.get_xlim()[0] == 0
    base_gflops = np.mean([r["gflops"] for r in result["runs"] if r["head"] == "fcn"])
    plotted = {c.get_label(): float(c.lines[0].get_xdata()[0]) for c in pareto.containers}
    expected = {h: np.mean([r["gflops"] for r in result["runs"] if r["head"] == h]) / base_gflops for h in HEADS}
    assert plotted == pytest.approx(expected)
    cost = _panel(fig, "cost relative")
    assert cost.get_ylim()[0] == 0 and cost.get_ylim()[1] >= 1.25
    gflops_bars = {  # the bars of the second cost (x = 1 ± 0.5)
        c.get_label(): p.get_height()
        for c in cost.containers
        if isinstance(c, BarContainer)
        for p in c
        if abs(p.get_x() + p.get_width() / 2 - 1) < 0.5
    }
    assert [t.get_text() for t in cost.get_xticklabels()][1] == "GFLOPs"  # the second group of bars
    assert gflops_bars == pytest.approx(expected)
    mem = _panel(fig, "peak memory")
    assert mem.get_xlim()[0] == 0
    ticks = [" ".join(t.get_text().split()) for t in cost.get_xticklabels()]
    assert ticks == ["params", "GFLOPs", "train s/img (CPU, noisy)", "eval s/img (CPU, noisy)", "peak memory"]
    hollow = [p for p in cost.patches if p.get_facecolor()[3] == 0]  # the throughput bars (CPU): no fill
    assert len(hollow) == 2 * len(HEADS)


def test_gpu_throughput_is_not_marked_noisy():
    fig = chart.figure(_result(["fcn", "danet"], seeds=2, device="cuda"))
    cost = _panel(fig, "cost relative")
    assert "noisy" not in " ".join(t.get_text() for t in cost.get_xticklabels())
    assert all(p.get_facecolor()[3] > 0 for p in cost.patches)
    plt.close(fig)


def test_title_says_what_was_compared_on_what(drawn):
    result, fig = drawn
    title = fig._suptitle.get_text()
    for part in (
        "resnet18",
        "output stride 8",
        "400 training steps",
        "seeds 0, 1, 2",
        "6 heads × 3 seeds",
        "data/demo",
    ):
        assert part in title
    assert "12 val images" in title and "AMD EPYC" in title and "2026-12-07" in title and "abc1234" in title
    md = report.markdown(result)
    for line in report.provenance_lines(result):
        assert line in md


LONG = HEADS + ["smp:DeepLabV3Plus", "smp:UnetPlusPlus", "ocr", "uper", "dnl", "sep_aspp"]  # long names, > 10


@pytest.mark.parametrize("heads", [HEADS, LONG], ids=["6heads", "12heads"])
def test_nothing_clipped_and_verdicts_inside_their_panel(heads, drawn):
    result, fig = drawn if heads == HEADS else (_result(heads, seeds=2), None)
    if fig is None:
        fig = chart.figure(result)
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for ax in fig.axes:  # tick labels: only those of ticks inside the view are drawn
        drawn_ticks = set(ax.xaxis._update_ticks()) | set(ax.yaxis._update_ticks())
        hidden = {t.label1 for ax_ in (ax.xaxis, ax.yaxis) for t in ax_.get_major_ticks() if t not in drawn_ticks}
        texts = [t for t in texts if t not in hidden]
    assert len(texts) > 40
    for t in texts:
        box = t.get_window_extent(renderer)
        assert fig_box.x0 - 1 <= box.x0 and box.x1 <= fig_box.x1 + 1, t.get_text()
        assert fig_box.y0 - 1 <= box.y0 and box.y1 <= fig_box.y1 + 1, t.get_text()
        assert t.get_fontsize() >= 7, t.get_text()
    delta = _panel(fig, "difference")
    verdicts = [t for t in delta.texts]
    assert sorted(t.get_text() for t in verdicts) == sorted(
        d["vs_baseline"]["verdict"] for d in result["heads"].values()
    )
    ax_box = delta.get_window_extent(renderer)
    for t in verdicts:
        box = t.get_window_extent(renderer)
        assert ax_box.x0 <= box.x0 and box.x1 <= ax_box.x1 and ax_box.y0 <= box.y0 and box.y1 <= ax_box.y1


def test_memory_panel_and_saved_png(tmp_path, drawn):
    result, fig = drawn
    mem = _panel(fig, "peak memory")
    assert "peak RSS" in mem.get_xlabel() and len(mem.patches) == len(HEADS)
    widths = sorted(p.get_width() for p in mem.patches)
    assert widths == pytest.approx(sorted(result["heads"][h]["peak_mem_mb"] for h in HEADS))
    chart.plot(result, tmp_path / "c.png")
    img = plt.imread(tmp_path / "c.png")
    assert img.shape[1] == chart.WIDTH_IN * chart.DPI


def test_provenance_unknowns_are_said_not_guessed(tmp_path, monkeypatch):
    from seg.compare import cli

    result = _result(["fcn", "danet"], seeds=2)
    del result["provenance"]  # a compare.json from before provenance was recorded
    for r in result["runs"]:
        del r["train_device"]
    lines = report.provenance_lines(result)
    assert "training steps unknown" in lines[1] and "data unknown" in lines[1]
    assert (
        lines[2].startswith("training device unknown")
        and "date unknown" in lines[2]
        and "seg commit unknown" in lines[2]
    )
    monkeypatch.setattr(cli, "ROOT", tmp_path)  # seg installed outside a checkout: no commit, not a guessed one
    assert cli._git_commit() is None
    p = cli.provenance([{**r, "steps": None} for r in result["runs"]])
    assert p["steps"] is None and "steps" in p["missing"] and p["backbone"] == "resnet18" and p["seeds"] == [0, 1]
