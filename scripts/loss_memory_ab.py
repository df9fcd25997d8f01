"""Training-step peak memory with the loss on full-resolution logits vs seg's fused resize + cross-entropy.

    python scripts/loss_memory_ab.py --device cpu --heads fcn danet nonlocal [--batch 1] [--size 512 1024]
    python scripts/loss_memory_ab.py --device cuda --batch 8

"naive": ``model(x)`` returns logits resized to the input (matrix-product resize, fp32) and each output gets
``F.cross_entropy`` (what seg trained with before the fused loss, and what mmseg does with ``F.interpolate``).
"fused": ``model(x, resize=False)`` + ``SegLoss`` (what ``train.py`` runs). Same model, bf16 autocast, channels_last.
Each case runs in a fresh process after one warm-up step; peak = ``seg.bench``'s measure (CUDA
``max_memory_allocated``; CPU malloc bytes in use sampled after every op). A diagnosis tool; not run in CI.
"""

import argparse

import torch

from seg import bench
from seg.training.losses import SegLoss


def case(head: str, mode: str, device: str, batch: int, size: tuple[int, int]) -> tuple[str, str, float]:
    torch.manual_seed(0)
    dev = torch.device(device)
    model = bench.build(head, "resnet50c", 19, dev, fast=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, *size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 19, (batch, *size), device=dev)
    criterion = SegLoss()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = bench.mmseg_loss(model(x), y) if mode == "naive" else criterion(model(x, resize=False), y)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    return head, mode, bench.peak_mb(step, dev)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--heads", nargs="+", default=["fcn", "danet", "nonlocal"])
    p.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, 1 on CPU")
    p.add_argument("--size", type=int, nargs=2, default=[512, 1024])
    a = p.parse_args()
    batch = a.batch or (8 if a.device == "cuda" else 1)
    peaks = {}
    for head in a.heads:
        for mode in ("naive", "fused"):
            _, _, peaks[head, mode] = bench.in_subprocess(case, head, mode, a.device, batch, tuple(a.size))
            print(f"{head:9s} {mode:6s} peak {peaks[head, mode]:8.0f} MiB", flush=True)
    if "fcn" in a.heads:
        for head in a.heads:
            print(
                f"{head:9s} x FCN mem: naive {peaks[head, 'naive'] / peaks['fcn', 'naive']:.3f}  "
                f"fused {peaks[head, 'fused'] / peaks['fcn', 'fused']:.3f}"
            )


if __name__ == "__main__":
    main()
