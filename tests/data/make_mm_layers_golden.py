"""Writes tests/data/mm_layers_golden.pt: inputs, weights and outputs of mmsegmentation's PAM/CAM and
mmcv's NonLocal2d / CrissCrossAttention, for tests/test_layers.py (golden tensors only; seg never
imports mm* code).

Run once in a separate venv (not a dependency of seg):
    python -m venv --system-site-packages /tmp/mmvenv
    /tmp/mmvenv/bin/pip install mmcv-lite==2.2.0 mmengine ftfy regex
    /tmp/mmvenv/bin/pip install --no-deps mmsegmentation==1.2.2
    /tmp/mmvenv/bin/python tests/data/make_mm_layers_golden.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import mmcv
import torch

mmcv.__version__ = "2.1.0"  # mmseg 1.2.2 refuses mmcv 2.2.0 at import; the blocks used here are unchanged
_ops = types.ModuleType("mmcv.ops")  # mmcv-lite has no compiled ops; none is used by these blocks
_ops.__file__ = "mmcv_ops_stub.py"


def _stub(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


_ops.__getattr__ = _stub
sys.modules["mmcv.ops"] = _ops
_spec = importlib.util.spec_from_file_location(
    "cc_attention", os.path.join(os.path.dirname(mmcv.__file__), "ops", "cc_attention.py")
)
_cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cc)

from mmcv.cnn.bricks.non_local import NonLocal2d  # noqa: E402
from mmseg.models.decode_heads.da_head import CAM, PAM  # noqa: E402

C = 16


def randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.endswith("scale") else 0.3))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)


def main() -> None:
    torch.manual_seed(0)
    cases = {
        "pam": (PAM(C, 4), dict(qk_channels=4)),
        "cam": (CAM(), {}),
        "criss_cross": (_cc.CrissCrossAttention(C), {}),
        "nonlocal": (NonLocal2d(C, reduction=2, use_scale=True, norm_cfg=dict(type="BN")), {}),
        "nonlocal_noscale": (
            NonLocal2d(C, reduction=2, use_scale=False, norm_cfg=dict(type="BN")),
            dict(use_scale=False),
        ),
        "nonlocal_dot_nonorm": (
            NonLocal2d(C, reduction=4, mode="dot_product"),
            dict(reduction=4, mode="dot_product", norm_layer=None),
        ),
    }
    golden = {}
    for name, (module, kwargs) in cases.items():
        randomise(module)
        module.eval()
        x = torch.randn(2, C, 9, 7)
        with torch.no_grad():
            out = module(x)
        golden[name] = dict(kwargs=kwargs, state_dict=module.state_dict(), x=x, out=out)
        print(name, tuple(out.shape), float((out - x).abs().mean()))
    path = Path(__file__).with_name("mm_layers_golden.pt")
    torch.save(golden, path)
    print("wrote", path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
