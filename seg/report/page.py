"""Write the report folder: the charts, the worst-image panels, ``confusion.csv``, ``report.json`` (every number)
and ``report.html`` (one self-contained page: the PNGs inlined as base64 data URIs, no external URL)."""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seg.evaluation import Scores, class_iou_interval, iou_from_counts, miou_from_counts
from seg.io import write_json
from seg.report import figures
from seg.report.collect import ReportCollector
from seg.report.panels import worst_panel

__all__ = ["write_report"]

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 1000


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _num(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def write_confusion_csv(confmat: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Counts, rows = ground truth, columns = prediction; header and first column are the class names."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ground_truth \\ prediction", *names])
        for name, row in zip(names, confmat.tolist()):
            w.writerow([name, *row])
    return path


def write_report(
    out: str | Path,
    result: dict[str, Any],
    scores: Scores,
    collector: ReportCollector,
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
) -> Path:
    """Write the report of one evaluation (``result`` = metrics.json's content, ``scores`` and ``collector``
    synced) into ``out``; returns the path of ``report.html``."""
    out = Path(out)
    (out / "worst").mkdir(parents=True, exist_ok=True)
    names = list(names)
    confmat = scores.confmat.cpu().numpy().astype(np.int64)
    counts = scores.counts
    iou = iou_from_counts(counts.sum(0)) if len(counts) else np.full(len(names), np.nan)
    low, high = class_iou_interval(counts, BOOTSTRAP_SAMPLES, CONFIDENCE)
    per_image = miou_from_counts(counts) if len(counts) else np.zeros(0)
    cal = collector.calibration.as_dict()

    files: dict[str, Path] = {"confusion_csv": write_confusion_csv(confmat, names, out / "confusion.csv")}
    fig, layout = figures.confusion_figure(confmat, names)
    files["confusion"] = figures.save(fig, out / "confusion.png")
    files["class_iou"] = figures.save(figures.iou_figure(names, iou, low, high, CONFIDENCE), out / "class_iou.png")
    files["per_image_miou"] = figures.save(figures.miou_histogram(per_image), out / "per_image_miou.png")
    files["reliability"] = figures.save(figures.reliability_figure(cal), out / "reliability.png")
    worst = []
    for rank, item in enumerate(collector.worst.items, 1):
        panel = worst_panel(
            item, rank, names, palette, out / "worst" / f"{rank:02d}_{Path(item.path).stem}.png", ignore_index
        )
        worst.append({"rank": rank, "path": item.path, "mIoU": item.mIoU, "panel": panel.relative_to(out).as_posix()})

    report = {
        "mIoU": result["mIoU"],
        "aAcc": result["aAcc"],
        "mAcc": result["mAcc"],
        "ECE": cal["ECE"],
        "num_images": result["num_images"],
        "per_class_IoU": result["per_class_IoU"],
        "per_class_Acc": result["per_class_Acc"],
        "per_class": [
            {
                "class": n,
                "IoU": _num(float(iou[c])),
                "ci_low": _num(float(low[c])),
                "ci_high": _num(float(high[c])),
                "gt_pixels": int(confmat[c].sum()),
                "pred_pixels": int(confmat[:, c].sum()),
            }
            for c, n in enumerate(names)
        ],
        "bootstrap": {
            "samples": BOOTSTRAP_SAMPLES,
            "confidence": CONFIDENCE,
            "seed": 0,
            "procedure": "images resampled with replacement; per-class IoU recomputed from the summed per-image "
            "counts; percentile interval",
        },
        "per_image": [{"path": p, "mIoU": _num(float(m))} for p, m in zip(scores.paths, per_image)],
        "worst": worst,
        "calibration": cal,
        "confusion": {"classes": names, "counts": confmat.tolist(), "layout": layout},
        "top_confusions": figures.top_confusions(confmat, names, figures.TOP_CONFUSIONS),
        "settings": {k: v for k, v in result.items() if not k.startswith("per_class")},
        "files": {k: p.relative_to(out).as_posix() for k, p in files.items()},
    }
    write_json(report, out / "report.json")
    page = out / "report.html"
    page.write_text(_html(report, out))
    return page


def _img(out: Path, rel: str, alt: str) -> str:
    data = base64.b64encode((out / rel).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1150px;color:#222;
padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:32px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f3f3f3}
.kpi{display:flex;gap:18px;flex-wrap:wrap;margin:12px 0}.kpi div{background:#f3f6fa;border-radius:6px;
padding:8px 14px}.kpi b{display:block;font-size:20px}
details{margin:8px 0}code{font-size:12px}
"""


def _html(r: dict[str, Any], out: Path) -> str:
    s = r["settings"]
    cal = r["calibration"]
    tta = f"scales {s.get('scales')}, flip {s.get('flip')}"
    scale = s.get("test_scale") or "none (original size)"
    slide = f", crop {s.get('crop_size')} stride {s.get('stride')}" if s.get("mode") == "slide" else ""
    header = _table(
        ["", ""],
        [
            ["checkpoint", s.get("ckpt")],
            ["model", f"{s.get('backbone')} + {s.get('head')} ({(s.get('params') or 0) / 1e6:.2f} M parameters)"],
            ["data", f"{s.get('data_root', '?')} (split {s.get('split')}, {r['num_images']} images)"],
            ["inference", f"{s.get('mode')}, test scale (H, W) {scale}, {tta}{slide}"],
            ["processes", s.get("world_size")],
        ],
    )
    kpi = "".join(
        f"<div>{k}<b>{v}</b></div>"
        for k, v in [
            ("mIoU", f"{_pct(r['mIoU'])} %"),
            ("aAcc", f"{_pct(r['aAcc'])} %"),
            ("mAcc", f"{_pct(r['mAcc'])} %"),
            ("ECE", f"{_pct(r['ECE'])} %"),
            ("images", r["num_images"]),
        ]
    )
    f = r["files"]
    classes = _table(
        ["class", "IoU %", f"{100 * r['bootstrap']['confidence']:.0f} % interval", "GT pixels", "predicted pixels"],
        [
            [
                c["class"],
                _pct(c["IoU"]),
                f"{_pct(c['ci_low'])} – {_pct(c['ci_high'])}",
                c["gt_pixels"],
                c["pred_pixels"],
            ]
            for c in sorted(r["per_class"], key=lambda c: -1 if c["IoU"] is None else c["IoU"])
        ],
    )
    top = _table(
        ["ground truth", "predicted as", "% of its pixels", "pixels"],
        [[t["gt"], t["pred"], _pct(t["fraction"]), t["pixels"]] for t in r["top_confusions"][:15]],
    )
    worst = "".join(
        f"<h3>#{w['rank']} · mIoU {_pct(w['mIoU'])} % · <code>{html.escape(w['path'])}</code></h3>"
        + _img(out, w["panel"], f"worst image {w['rank']}")
        for w in r["worst"]
    )
    n_px = cal["pixels"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seg evaluation report</title><style>{STYLE}</style></head>
<body>
<h1>Evaluation report</h1>
<div class="kpi">{kpi}</div>
{header}
<p>Files beside this page: <a href="report.json">report.json</a> (every number),
<a href="{f["confusion_csv"]}">{f["confusion_csv"]}</a> (confusion counts), the PNGs below.</p>
<h2>Where the model fails: confusions</h2>
{_img(out, f["confusion"], "confusion")}
<details><summary>Largest confusions (table)</summary>{top}</details>
<h2>Per-class IoU</h2>
<p>Error bars: {100 * r["bootstrap"]["confidence"]:.0f} % percentile bootstrap interval over images
({r["bootstrap"]["samples"]} resamples): how much each class's IoU depends on which images were drawn.</p>
{_img(out, f["class_iou"], "per-class IoU")}
<details><summary>Per-class table</summary>{classes}</details>
{_img(out, f["per_image_miou"], "per-image mIoU")}
<h2>How sure it is: calibration</h2>
<p>Expected calibration error {_pct(r["ECE"])} % over {n_px:,} labelled pixels ({cal["bins"]} equal-width bins of the
top softmax probability; ECE = Σ |accuracy − confidence| · n<sub>bin</sub> / N).</p>
{_img(out, f["reliability"], "reliability diagram")}
<h2>The {len(r["worst"])} worst images</h2>
<p>Lowest per-image mIoU (over the classes in the image's ground truth or prediction). Error map: wrong pixels red,
ignored pixels grey.</p>
{worst}
</body></html>
"""
