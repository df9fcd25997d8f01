"""``--onnx``: whole-image latency of one head in ONNX Runtime (CPU) beside PyTorch eager, same model."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .models import build, stride
from .result import Result
from .timing import time_call

__all__ = ["run_onnx_case"]


def run_onnx_case(head: str, backbone: str, size: tuple[int, int], iters: int, **build_kwargs) -> list[dict]:
    """Whole-image latency of one head: PyTorch eager (fp32, CPU, default attention cores) and ONNX Runtime
    (CPU) on a static ``seg.export`` of the same random-init model; plus file size and output difference."""
    import tempfile

    import onnxruntime as ort

    from seg.export import DeployModel, export_model

    torch.manual_seed(0)
    deploy = DeployModel(build(head, backbone, 19, torch.device("cpu"), fast=True, **build_kwargs)).eval()
    x = deploy.example(1, size)
    label = f"{backbone}-D{stride(head)} B=1 {size[0]}x{size[1]}"
    with torch.inference_mode():
        ref = deploy(x)
        torch_ms = 1e3 * time_call(lambda: deploy(x), torch.device("cpu"), 1, iters)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_model(deploy, "onnx", Path(tmp) / f"{head}.onnx", size)
        export_s = time.perf_counter() - t0
        file_mb = path.stat().st_size / 2**20
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, xn = session.get_inputs()[0].name, x.numpy()
    out = session.run(None, {name: xn})[0]
    ort_ms = 1e3 * time_call(lambda: session.run(None, {name: xn}), torch.device("cpu"), 1, iters)
    max_abs = float((torch.from_numpy(out) - ref).abs().max())
    extra = {"file_mb": file_mb, "export_s": export_s, "max_abs": max_abs, "rel": max_abs / float(ref.abs().max())}
    return [
        asdict(Result("onnx", head, label, "pytorch", "float32", fwd_ms=torch_ms)),
        asdict(Result("onnx", head, label, "onnxruntime", "float32", fwd_ms=ort_ms, extra=extra)),
    ]
