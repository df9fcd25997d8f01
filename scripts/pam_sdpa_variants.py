"""Time DANet's PAM core through SDPA with different v-head splits and kernels, against the explicit reference.

    python scripts/pam_sdpa_variants.py                 # CUDA: B=8, 64x128 features, q/k 64, v 512, bf16
    python scripts/pam_sdpa_variants.py --device cpu    # small shape: only checks that every variant agrees

``position_attention_sdpa`` splits v (512 channels) into heads of the q/k width (64) that share q and k, so flash
kernels apply; each head recomputes q.k, 8 times in all. Variants here: heads of 64 (seg's default); q/k padded
with zeros to 128 or 256 channels (the same dot products) with 4 or 2 v heads; one head with all of v (only the
memory-efficient kernel takes a v width different from q/k). Each runs with every SDPA backend that accepts it.
A measurement tool for the Performance work (which split should be the default); not run in CI.
"""

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from seg.bench import peak_mb, time_call
from seg.layers.functional import position_attention_reference, position_attention_sdpa

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("B", "H", "W"),
        default=None,
        help="default: 8 64 128 on CUDA, 1 16 24 on CPU",
    )
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    dev = torch.device(a.device)
    b, h, w = a.shape or ((8, 64, 128) if dev.type == "cuda" else (1, 16, 24))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    q = torch.randn(b, 64, h, w, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    k = torch.randn_like(q)
    v = torch.randn(b, 512, h, w, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ref = position_attention_reference(q.float(), k.float(), v.float())

    def variant(width: int, head_dim: int):
        def run():
            pad = width - q.shape[1]
            qp, kp = (F.pad(t, (0, 0, 0, 0, 0, pad)) if pad else t for t in (q, k))  # zero channels
            return position_attention_sdpa(qp, kp, v, head_dim=head_dim)

        return run

    variants = {
        "explicit": lambda: position_attention_reference(q, k, v),
        "heads 8x64": variant(64, 64),
        "qk pad 128, heads 4x128": variant(128, 128),
        "qk pad 256, heads 2x256": variant(256, 256),
        "1 head, v 512": variant(64, 512),
    }
    print(f"{'variant':26s} {'backend':10s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'peak MiB':>9s} {'max err':>8s}")
    for name, fn in variants.items():
        for backend, kind in BACKENDS.items():
            if name == "explicit" and backend != "default":
                continue
            ctx = sdpa_kernel([kind]) if kind is not None else contextlib.nullcontext()
            try:
                with ctx:
                    err = (fn().float() - ref).abs().max().item()

                    def fwd_bwd():
                        fn().sum().backward()
                        q.grad = k.grad = v.grad = None

                    with torch.no_grad():
                        fwd_ms = 1e3 * time_call(fn, dev, 2, a.iters)
                    peak = peak_mb(fwd_bwd, dev)
                    fb_ms = 1e3 * time_call(fwd_bwd, dev, 2, a.iters)
            except RuntimeError as e:  # this backend does not take this variant
                print(f"{name:26s} {backend:10s} not available: {str(e).splitlines()[0][:70]}")
                continue
            print(f"{name:26s} {backend:10s} {fwd_ms:8.2f} {fb_ms:11.2f} {peak:9.0f} {err:8.2e}", flush=True)


if __name__ == "__main__":
    main()
