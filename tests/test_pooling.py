"""seg.layers.pooling: the export form of adaptive average pooling equals PyTorch's at sizes that do and do not
divide, and stays symbolic in a dynamic torch.export graph."""

import pytest
import torch
from torch import nn

from seg.layers.functional import export_mode
from seg.layers.pooling import AdaptiveAvgPool2d


@pytest.mark.parametrize("size", [(11, 15), (12, 12), (6, 9), (5, 3)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6, 8])
def test_export_form_equals_adaptive_avg_pool(size, scale):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with export_mode():
        out = AdaptiveAvgPool2d(scale)(x)
    torch.testing.assert_close(out, nn.AdaptiveAvgPool2d(scale)(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(AdaptiveAvgPool2d(scale)(x), nn.AdaptiveAvgPool2d(scale)(x), rtol=0, atol=0)


@pytest.mark.parametrize("module", [AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d])
def test_dynamic_onnx_is_right_at_another_size(module, tmp_path):
    """Through ONNX Runtime at a size the graph was not traced at: seg's module is exact, PyTorch's own is not
    (the exporter freezes its kernel and stride; this is why PSPNet/UPerNet/ANN use seg's)."""
    ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[export]'); CI installs it")
    from seg.export import save_onnx

    auto = torch.export.Dim.AUTO
    with export_mode():
        program = torch.export.export(
            module(6).eval(), (torch.randn(2, 4, 12, 18),), dynamic_shapes=({0: auto, 2: auto, 3: auto},)
        )
    session = ort.InferenceSession(str(save_onnx(program, tmp_path / "pool.onnx")), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 4, 11, 23)  # neither dimension divisible by 6
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    ref = nn.AdaptiveAvgPool2d(6)(x)
    exact = out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert exact == (module is AdaptiveAvgPool2d)
