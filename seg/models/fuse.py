"""Fold BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is a fixed per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so ``BN(conv(x))`` equals one convolution with rescaled weights and a new bias. Folding removes a full pass
over every BN'd activation (R50-D8 has 60+ of them at 1/8 resolution), which on a CPU is memory traffic, not
arithmetic: a sizeable share of whole-image inference time.

Which BN follows which conv is found from the data flow, not from module names: one forward pass of an
example input records each ``Conv2d``'s output tensor and each ``BatchNorm2d``'s input; a BN whose input *is*
a conv's output (the same tensor object), with both modules called exactly once, is folded. Names and module
order would be fragile across timm's blocks and seg's heads. Every recorded tensor stays referenced until the
pairs are read: identity is compared by ``id()``, and CPython hands a freed object's id to the next object, so a
BN input freed mid-pass (e.g. a ``ConvTranspose2d`` output) would otherwise share its id with a later conv's
output and pair that BN with a conv it never saw (issue D14; the pairing then depended on allocation history).
A conv output that is also used elsewhere (before the BN) would make folding wrong; no seg model does that, and
``fuse_conv_bn`` checks the folded model against the original on the example input (``verify``) so that such a
model fails loudly instead of predicting silently different masks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_bn_into_conv", "fuse_conv_bn"]


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rescale ``conv`` in place so that ``conv(x)`` equals the eval-mode ``bn(conv(x))``.

    Computed in float64 and rounded once to the weights' dtype: the folded weights then differ from the exact
    product by at most one rounding, so the fused model matches the unfused one to fp32 precision.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold {bn} into {conv}: {bn.num_features} features vs {conv.out_channels} channels")
    w = conv.weight
    inv_std = (bn.running_var.double() + bn.eps).rsqrt()  # (C,)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = gamma * inv_std  # (C,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    conv.weight.copy_((w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))  # (Cout, Cin/g, kh, kw)
    new_bias = ((bias - bn.running_mean.double()) * scale + beta).to(w.dtype)  # (C,)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN's input is the conv's output, from one forward of ``example``."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    conv_out: dict[int, str] = {}  # id(output tensor) -> conv name
    bn_in: dict[str, int] = {}  # bn name -> id(input tensor)
    alive: list[torch.Tensor] = []  # every tensor whose id is recorded: ids stay unique until the pairs are read
    hooks = []

    def on_conv(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        conv_out[id(out)] = name
        alive.append(out)

    def on_bn(mod: nn.Module, inputs: tuple) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        bn_in[name] = id(inputs[0])
        alive.append(inputs[0])

    for mod in model.modules():
        if type(mod) is nn.Conv2d:
            hooks.append(mod.register_forward_hook(on_conv))
        elif type(mod) is nn.BatchNorm2d:  # exact type: SyncBatchNorm / BN+act subclasses do more than BN
            hooks.append(mod.register_forward_pre_hook(on_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    pairs = []
    for bn_name, tensor_id in bn_in.items():
        conv_name = conv_out.get(tensor_id)
        if conv_name is not None and calls[conv_name] == 1 and calls[bn_name] == 1:
            pairs.append((conv_name, bn_name))
    return pairs


def _first_out(out: object) -> torch.Tensor:
    if isinstance(out, dict):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out  # type: ignore[return-value]


@torch.no_grad()
def fuse_conv_bn(
    model: nn.Module, example: torch.Tensor, verify: bool = True, inplace: bool = False, rtol: float = 1e-3
) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it; the BN becomes ``nn.Identity``.

    Args:
        model: in eval mode (folding uses the running statistics; a train-mode BN uses the batch's).
        example: an input the model accepts, e.g. ``torch.randn(1, 3, 128, 128)``: one forward finds the pairs.
        verify: check the folded model against the original on ``example`` and raise if they differ by more than
            ``rtol`` of the output's largest magnitude (only fp32 rounding is expected).
        inplace: fold into ``model`` itself; otherwise into a deep copy (the original stays trainable).

    Returns:
        The folded model, with ``fused_conv_bn`` set to the number of folded pairs.
    """
    if model.training:
        raise ValueError("fuse_conv_bn: call model.eval() first (folding uses the BatchNorm running statistics)")
    target = model if inplace else copy.deepcopy(model)
    reference = _first_out(model(example)).float() if verify else None
    pairs = _conv_bn_pairs(target, example)
    modules = dict(target.named_modules())
    for conv_name, bn_name in pairs:
        fold_bn_into_conv(modules[conv_name], modules[bn_name])
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else target, attr, nn.Identity())
    target.fused_conv_bn = len(pairs)
    if reference is not None:
        out = _first_out(target(example)).float()
        err = (out - reference).abs().max().item()
        bound = rtol * max(reference.abs().max().item(), 1e-6)
        if not err <= bound:
            raise RuntimeError(
                f"fuse_conv_bn: the folded model differs from the original by {err:.3g} (allowed "
                f"{bound:.3g}); some conv output is used besides its BatchNorm. Run without fusing."
            )
    return target
