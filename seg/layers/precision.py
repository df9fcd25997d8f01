"""The dtype rules of the attention cores in ``seg.layers.functional``: which dtype their matmuls run in, and the
channel-attention energies in (at least) fp32 without an fp32 copy of the input.

Kept apart from the cores because every core follows the same rules (softmax in fp32, matmuls in autocast's dtype
when it is on), and ``_GramFp32`` is an autograd Function with a hand-written backward: a detail of how
``channel_attention`` stays lean under bf16 autocast, not part of what it computes.
"""

from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the promoted input dtype."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


#: ``aten::bmm.dtype`` (``torch.bmm(..., out_dtype=)``, CUDA only): fp16/bf16 inputs, fp32 output.
_HAS_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")


def _energy_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32: fp16/bf16/fp32 -> fp32, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class _GramFp32(torch.autograd.Function):
    """``X X^T`` for X (B, C, N) of any float dtype, computed and returned in (at least) fp32.

    Autograd of ``bmm(X.float(), X.float().transpose(1, 2))`` would save the fp32 copy of X (twice the
    size of a bf16 X) and run two fp32 matmuls in backward, one per operand. Here only X itself is saved
    (in its own dtype; the network keeps it for other uses anyway, so no new storage), and since the
    two operands are the same tensor, backward is one matmul: ``grad_X = (G + G^T) X``.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        if _HAS_BMM_OUT_DTYPE and x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16):
            # fp16/bf16 tensor cores accumulating into fp32: X's values are exact in its own dtype, so
            # this is the fp32 product (up to summation order) without the fp32 copy of X.
            return torch.bmm(x, x.transpose(1, 2), out_dtype=torch.float32)
        xf = x.to(_energy_dtype(x.dtype))
        return torch.bmm(xf, xf.transpose(1, 2))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor | None:
        if not ctx.needs_input_grad[0]:
            return None
        (x,) = ctx.saved_tensors
        # explicit dtypes below: no autocast recasting if backward() is called inside an autocast region
        with torch.autocast(device_type=x.device.type, enabled=False):
            sym = grad + grad.transpose(1, 2)  # (B, C, C) in the energy dtype
            if x.device.type == "cuda" and x.dtype == torch.bfloat16:
                # The gradient is returned in bf16 anyway: one bf16 tensor-core matmul (fp32
                # accumulation), as autocast runs the other matmuls of the backward, instead of an fp32
                # one on an fp32 copy of X. Rounding sym to bf16 costs about one bf16 ulp per term (bf16
                # has fp32's range, so nothing overflows). fp16 (max 65504, loss-scaled gradients) and
                # CPU keep fp32.
                return torch.bmm(sym.to(x.dtype), x)
            return torch.bmm(sym, x.to(sym.dtype)).to(x.dtype)
