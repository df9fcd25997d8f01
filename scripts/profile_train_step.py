"""Profile one head's R50-D8 training step on CUDA (bf16, channels_last, as seg.bench's fast path).

    python scripts/profile_train_step.py --heads fcn danet [--batch 8] [--size 512 1024]

Prints, per head, the step time and the CUDA kernels that take the most time, grouped by operator.
A diagnosis tool for the Performance work; not run in CI.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from seg.bench import build
from seg.training.losses import SegLoss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--heads", nargs="+", default=["fcn", "danet"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[512, 1024])
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    for head in a.heads:
        model = build(head, "resnet50c", 19, dev, fast=True).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(a.batch, 3, *a.size, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 19, (a.batch, *a.size), device=dev)

        def step(model=model, opt=opt, x=x, y=y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = SegLoss()(model(x, resize=False), y)[0]  # what train.py runs
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(f"\n===== {head}: 3 steps =====")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))
        del model, opt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
