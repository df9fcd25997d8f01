"""``optimize_for_inference``: the measured CPU inference levers, behind one call for ``seg.predict`` / ``seg.evaluate``.

What each lever does on a CPU (measured in docs/benchmarks.md, R50-D8, one 512x1024 image, 2-core AMD EPYC):

* ``fuse_bn`` - BatchNorm folded into the preceding conv (``seg.models.fuse``): one pass less over every
  normalised activation; exact to fp32 rounding.
* ``channels_last`` - NHWC weights and activations: oneDNN's direct NHWC convolutions instead of the NCHW
  path (and no layout reorder per conv). Dilated depthwise convs (the separable ASPP's, dilation 12-36) pad their
  input explicitly (`ExplicitPadConv2d`): oneDNN's NHWC kernel for them with implicit padding is 3-11x slower.
* logits resized by ``F.interpolate`` on CPU (``fast_resize = False``): ``resize_bilinear``'s matrix products pay
  for a fast GPU backward, but on a CPU the fp32 matmul resize of 19 x 512 x 1024 logits took ~5 % of an R50-D8
  forward, ``F.interpolate`` well under 1 % (same values to fp32 rounding).
* ``bf16`` - weights cast to bf16 once and the forward under bf16 autocast (CPUs with AVX512-BF16 / AMX: oneDNN
  bf16 convolutions, about half the conv time; pre-cast weights spare autocast a copy of every weight per call).
  Attention softmaxes stay fp32 (``seg.layers.functional``). The logits change by bf16 rounding (~1e-2
  relative), so it is off by default and reported with its accuracy change in docs/benchmarks.md.
* ``compile`` - ``torch.compile`` (inductor) with ``freezing``: weights become constants, oneDNN convolutions get
  prepacked weights and fused ReLU / residual-add post-ops, pointwise ops fuse. Off by default: compiling R50-D8
  takes about a minute on 2 cores and recompiles for every new input size; it pays for many images of one size.

The returned module keeps the model's call signature (``model(x)`` -> dict of logits) so it can replace
``module.model`` in place; it is for inference only (no training: BN is folded).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fuse import fuse_conv_bn

__all__ = ["ExplicitPadConv2d", "InferenceModel", "optimize_for_inference", "pad_dilated_depthwise"]


class ExplicitPadConv2d(nn.Conv2d):
    """A conv that zero-pads its input with ``F.pad`` and convolves without padding: the same values. On CPU,
    oneDNN's channels_last depthwise kernel with dilation and implicit padding is 3-11x slower than on the
    explicitly padded input (2048 channels, 64x128, dilation 12 / 24 / 36: 188 / 182 / 548 ms -> 62 / 81 / 98 ms
    fp32, 2-core AMD EPYC). Made by `pad_dilated_depthwise`; parameters and state-dict keys stay the conv's."""

    explicit_pad: tuple[int, int, int, int]

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(F.pad(input, self.explicit_pad), weight, bias, self.stride, 0, self.dilation, self.groups)


def pad_dilated_depthwise(model: nn.Module) -> int:
    """Turn ``model``'s dilated depthwise ``nn.Conv2d``s (zero padding given as numbers) into
    `ExplicitPadConv2d`, in place; returns how many. Dense convs stay: oneDNN skips their padding taps itself."""
    count = 0
    for mod in model.modules():
        if (
            type(mod) is nn.Conv2d
            and mod.groups > 1
            and mod.groups == mod.in_channels
            and max(mod.dilation) > 1
            and isinstance(mod.padding, tuple)
            and any(mod.padding)
            and mod.padding_mode == "zeros"
        ):
            ph, pw = mod.padding
            mod.__class__ = ExplicitPadConv2d  # same parameters and keys; only the forward changes
            mod.explicit_pad = (pw, pw, ph, ph)
            mod.padding = (0, 0)
            count += 1
    return count


class InferenceModel(nn.Module):
    """Runs the wrapped model with the input in the model's memory format and, optionally, under bf16 autocast;
    outputs come back as fp32 (argmax / softmax downstream expect fp32)."""

    def __init__(self, model: nn.Module, channels_last: bool, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.bf16 = bf16

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x, *args, **kwargs)
        if self.bf16:
            if isinstance(out, dict):
                return {k: v.float() for k, v in out.items()}
            return out.float()
        return out

    def __getattr__(self, name: str) -> Any:  # build_args, fast_resize, head ... of the wrapped model
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)


def optimize_for_inference(
    model: nn.Module,
    device: torch.device | str = "cpu",
    fuse_bn: bool = True,
    channels_last: bool = True,
    bf16: bool = False,
    example_size: tuple[int, int] = (128, 128),
    in_channels: int = 3,
    inplace: bool = False,
    compile: bool = False,
) -> nn.Module:
    """An eval-mode copy of ``model`` (``inplace``: the model itself) prepared for fast inference on ``device``
    (see the module docstring); the copy leaves the original trainable and comparable.

    On CUDA only ``channels_last`` applies by default (cuDNN fuses BN itself only under compile; fusing is cheap
    and exact, so ``fuse_bn`` is honoured there too). The input of one ``example_size`` forward pass is used to
    find the conv -> BN pairs and to verify the folded model.
    """
    device = torch.device(device)
    model = (model if inplace else copy.deepcopy(model)).to(device).eval()
    if fuse_bn:
        example = torch.randn(
            1, in_channels, *example_size, device=device, generator=torch.Generator(device=device).manual_seed(0)
        )
        model = fuse_conv_bn(model, example, inplace=True)
    if device.type == "cpu" and hasattr(model, "fast_resize"):
        model.fast_resize = False
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            pad_dilated_depthwise(model)
    if bf16:
        if device.type == "cpu" and not torch.backends.mkldnn.is_available():
            raise ValueError("optimize_for_inference: bf16 on CPU needs oneDNN (torch.backends.mkldnn)")
        model = model.to(torch.bfloat16)
    if compile:  # freezing: parameters are folded in as constants (inference only, under no_grad/inference_mode)
        model = torch.compile(model, dynamic=False, options={"freezing": True})
    return InferenceModel(model, channels_last, bf16).eval()
