"""Markdown tables of benchmark rows (the ``.md`` beside the JSON)."""

from __future__ import annotations

import math

__all__ = ["fmt", "to_markdown"]


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if 0 < abs(v) < 10**-digits * 5:  # e.g. CPU img/s: 3 significant digits instead of "0.0"/"0.1"
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# seg.bench on {meta['device_name']}",
        "",
        f"`{meta['command']}` - torch {meta['torch']}, {meta['date']}",
        "",
    ]
    cores = [r for r in results if r["part"] == "core"]
    if cores:
        lines += [
            "## Attention cores",
            "",
            "| core | shape | impl | dtype | fwd ms | fwd+bwd ms | peak MiB | note |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in cores:
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {fmt(r['fwd_ms'], 2)} | "
                f"{fmt(r['fwd_bwd_ms'], 2)} | {fmt(r['peak_mb'], 0)} | {r['note']} |"
            )
        lines.append("")
    train = [r for r in results if r["part"] == "train"]
    if train:
        fcn = {r["impl"]: r for r in train if r["name"] == "fcn"}
        lines += [
            "## Training step (forward + backward + SGD)",
            "",
            "| head | shape | impl | dtype | img/s | x FCN (same impl) | x explicit | peak MiB | x FCN mem | TFLOP/s | MFU | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        by = {(r["name"], r["impl"]): r for r in train}
        for r in train:
            base = fcn.get(r["impl"])
            expl = by.get((r["name"], "explicit"))
            rel = r["img_s"] / base["img_s"] if base and base["img_s"] and r["img_s"] else None
            spd = r["img_s"] / expl["img_s"] if expl and expl["img_s"] and r["img_s"] else None
            mem = r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] and r["peak_mb"] else None
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {fmt(r['img_s'])} | {fmt(rel, 2)} | "
                f"{fmt(spd, 2)} | {fmt(r['peak_mb'], 0)} | {fmt(mem, 2)} | {fmt(r['tflops'])} | "
                f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], 0)}{'%' if r['mfu'] else ''} | {r['note']} |"
            )
        lines.append("")
    infer = [r for r in results if r["part"] == "infer"]
    if infer:
        lines += [
            "## Whole-image inference",
            "",
            "| head | shape | impl | dtype | ms | peak MiB | mem / explicit | note |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        by = {(r["name"], r["impl"]): r for r in infer}
        for r in infer:
            expl = by.get((r["name"], "explicit"))
            ratio = r["peak_mb"] / expl["peak_mb"] if expl and expl["peak_mb"] and r["peak_mb"] is not None else None
            lines.append(
                f"| {r['name']} | {r['shape']} | {r['impl']} | {r['dtype']} | {fmt(r['fwd_ms'])} | {fmt(r['peak_mb'], 0)} | "
                f"{fmt(ratio, 3)} | {r['note']} |"
            )
        lines.append("")
    lines += infer_opt_markdown(results)
    lines += onnx_markdown(results)
    return "\n".join(lines)


def _by_head(results: list[dict], parts: tuple[str, ...]) -> tuple[dict, list[str]]:
    """The results of `parts` keyed by (head, impl), and the heads in order of first appearance."""
    by = {(r["name"], r["impl"]): r for r in results if r["part"] in parts}
    return by, list(dict.fromkeys(name for name, _ in by))


def onnx_markdown(results: list[dict]) -> list[str]:
    by, heads = _by_head(results, ("onnx",))
    if not heads:
        return []
    lines = [
        "## Whole-image inference: ONNX Runtime vs PyTorch (CPU, fp32)",
        "",
        "| head | shape | PyTorch ms | ONNX Runtime ms | ORT / PyTorch | .onnx MiB | max abs diff | max rel diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for head in heads:
        pt, rt = by[(head, "pytorch")], by[(head, "onnxruntime")]
        e = rt["extra"]
        lines.append(
            f"| {head} | {pt['shape']} | {fmt(pt['fwd_ms'])} | {fmt(rt['fwd_ms'])} | "
            f"{fmt(rt['fwd_ms'] / pt['fwd_ms'], 2)} | {fmt(e['file_mb'])} | {e['max_abs']:.2g} | {e['rel']:.2g} |"
        )
    return lines + [""]


def infer_opt_markdown(results: list[dict]) -> list[str]:
    """The ``infer`` part: per head plain vs optimised whole-image inference, with the logit difference."""
    by, heads = _by_head(results, ("infer_cpu", "infer_opt"))
    if not heads:
        return []
    lines = [
        "## Whole-image inference: plain model vs optimize_for_inference",
        "",
        "| head | shape | levers | dtype | plain ms | opt ms | speed-up | plain peak MiB | opt peak MiB | "
        "max rel logit diff | argmax agrees |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for head in heads:
        p, o = by[(head, "plain")], by[(head, "opt")]
        e = o["extra"]
        lines.append(
            f"| {head} | {p['shape']} | {o['note']} | {o['dtype']} | {fmt(p['fwd_ms'])} | {fmt(o['fwd_ms'])} | "
            f"{fmt(p['fwd_ms'] / o['fwd_ms'], 2)} | {fmt(p['peak_mb'], 0)} | {fmt(o['peak_mb'], 0)} | "
            f"{e['max_rel_diff']:.2g} | {100 * e['argmax_agree']:.2f} % |"
        )
    return lines + [""]
