"""Where one head's whole-image CPU inference time goes: torch.profiler's top operators, plain vs optimised.

    python scripts/profile_cpu_inference.py --head danet --size 512 1024 --variants plain opt opt-bf16

Not part of the package; prints one table per variant (self CPU time per aten op, sorted) after a warm-up call.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from seg.bench.models import build
from seg.models.optimize import optimize_for_inference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", default="fcn")
    p.add_argument("--backbone", default="resnet50c")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024))
    p.add_argument("--variants", nargs="+", default=["plain", "opt"], choices=["plain", "opt", "opt-bf16"])
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    plain = build(a.head, a.backbone, 19, torch.device("cpu"), fast=True).eval()  # as seg.predict ran it
    x = torch.randn(1, 3, *a.size).contiguous(memory_format=torch.channels_last)
    for variant in a.variants:
        model = plain if variant == "plain" else optimize_for_inference(plain, "cpu", bf16=variant == "opt-bf16")
        with torch.inference_mode():
            model(x)  # warm-up (oneDNN primitive creation)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        print(f"\n== {a.head} {variant}: {total:.2f} s self CPU total")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
