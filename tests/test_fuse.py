"""Conv+BN folding and optimize_for_inference: the optimised model computes what the plain model computes."""

import pytest
import torch
from helpers import tiny_smp
from torch import nn

from seg.models import HEADS, all_head_names, build_model
from seg.models.fuse import fold_bn_into_conv, fuse_conv_bn
from seg.models.optimize import ExplicitPadConv2d, optimize_for_inference, pad_dilated_depthwise

TINY = dict(backbone_kwargs=dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64)), channels=16, aux_channels=8)


def _tiny_model(head: str) -> nn.Module:
    torch.manual_seed(0)
    if head in HEADS:
        kwargs = dict(TINY, output_stride=getattr(HEADS[head], "recipe_output_stride", 8))
        model = build_model("resnet18", head, 5, weights=None, **kwargs)
    else:  # an smp architecture
        model = tiny_smp(head)
    with torch.no_grad():  # non-trivial statistics and affine parameters, so that folding has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def test_fold_bn_into_conv_equals_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=False, groups=1), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 3, 9, 11)
    expected = (conv(x) - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt() * bn.weight[
        :, None, None
    ] + bn.bias[:, None, None]
    fold_bn_into_conv(conv, bn)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", all_head_names())
def test_fused_model_matches_the_unfused_one(head):
    """Every native head and smp architecture, one after another in one process (as ``seg.bench``'s infer part and
    a predict/evaluate session fold them): the folded logits are the unfolded ones. smp's Linknet is the case of
    issue D14: a BatchNorm after a ConvTranspose2d (not folded) sees a tensor that is freed right after, and the
    next conv's output used to inherit its id and be paired with that BatchNorm."""
    model = _tiny_model(head)
    x = torch.randn(1, 3, 41, 57)
    fused = fuse_conv_bn(model, torch.randn(1, 3, 64, 64))
    assert fused is not model and fused.fused_conv_bn > 0

    # each fold removes one BatchNorm from the eval forward (the aux head's, not run in eval, stay)
    def bns_run(m: nn.Module) -> int:
        ran = []
        hooks = [
            b.register_forward_hook(lambda *a: ran.append(1)) for b in m.modules() if isinstance(b, nn.BatchNorm2d)
        ]
        with torch.no_grad():
            m(x)
        for h in hooks:
            h.remove()
        return len(ran)

    assert bns_run(model) - bns_run(fused) == fused.fused_conv_bn
    with torch.no_grad():
        out, ref = fused(x)["out"], model(x)["out"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


class _FreedBeforeConv(nn.Module):
    """conv_a -> bn_a (a real pair); bn_b normalises a temporary that is freed as soon as bn_b returns; then conv_b,
    whose output CPython allocates in the freed temporary's slot: the same ``id()`` as bn_b's input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.bn_b, self.conv_b = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1)
        with torch.no_grad():
            for bn in (self.bn_a, self.bn_b):
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_a(self.conv_a(x))
        z = self.bn_b(y * 2.0)  # the product is freed when bn_b returns
        return self.conv_b(z)


def test_pairs_follow_the_data_flow_not_reused_ids():
    """Issue D14: pairing by ``id()`` of tensors that were freed during the trace paired bn_b with conv_b (a conv
    that runs *after* it) and failed with "4 features vs 6 channels", or, with equal widths, folded a BN into the
    wrong conv. Only conv_a -> bn_a is a pair."""
    torch.manual_seed(0)
    model = _FreedBeforeConv().eval()
    x = torch.randn(1, 3, 5, 7)
    ids = {}

    def bn_b_input(mod: nn.Module, inputs: tuple) -> None:
        ids["bn_b in"] = id(inputs[0])

    def conv_b_output(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        ids["conv_b out"] = id(out)

    hooks = [model.bn_b.register_forward_pre_hook(bn_b_input), model.conv_b.register_forward_hook(conv_b_output)]
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    assert ids["bn_b in"] == ids["conv_b out"], "the freed tensor's id was not reused: this test provokes nothing"
    fused = fuse_conv_bn(model, x)
    assert fused.fused_conv_bn == 1
    assert isinstance(fused.bn_a, nn.Identity) and type(fused.bn_b) is nn.BatchNorm2d
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)


def test_optimize_for_inference_matches_and_keeps_the_original():
    model = _tiny_model("danet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optimize_for_inference(model, "cpu")
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        ref, out = model(x)["out"], opt(x)["out"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was optimised
    assert opt.build_args == model.build_args  # attributes of the wrapped model stay reachable
    with torch.no_grad():  # bf16: close to fp32, not equal (reported with its accuracy in docs/benchmarks.md)
        low = optimize_for_inference(model, "cpu", bf16=True)(x)["out"]
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_fuse_refuses_train_mode_and_wrong_folds():
    model = _tiny_model("fcn").train()
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(model, torch.randn(1, 3, 32, 32))

    class SkipBeforeBN(nn.Module):  # the conv output is used besides its BN: folding would change the result
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            with torch.no_grad():
                self.bn.running_mean.fill_(1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    with pytest.raises(RuntimeError, match="differs from the original"):
        fuse_conv_bn(SkipBeforeBN().eval(), torch.randn(1, 3, 8, 8))


def test_dilated_depthwise_convs_pad_explicitly_with_the_same_result():
    """The separable ASPP's dilated depthwise convs become ExplicitPadConv2d (a CPU speed fix): same values,
    same parameters and state-dict keys; dense and undilated convs are left alone."""
    model = _tiny_model("sep_aspp")
    dw = [m for m in model.modules() if type(m) is nn.Conv2d and m.groups > 1 and max(m.dilation) > 1]
    assert len(dw) == 3  # the three dilated branches
    opt = optimize_for_inference(model, "cpu")
    assert sum(isinstance(m, ExplicitPadConv2d) for m in opt.modules()) == 3
    unfused = optimize_for_inference(model, "cpu", fuse_bn=False)
    assert sum(isinstance(m, ExplicitPadConv2d) for m in unfused.modules()) == 3
    assert list(unfused.model.state_dict()) == list(model.state_dict())
    x = torch.randn(1, 3, 53, 67)
    with torch.no_grad():
        ref, out = model(x)["out"], opt(x)["out"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    torch.manual_seed(1)  # one conv on its own, against F.conv2d with its own padding (channels_last as on CPU)
    conv = nn.Conv2d(8, 8, 3, padding=(5, 3), dilation=(5, 3), groups=8)
    xs = torch.randn(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
    expected = conv(xs)
    plain = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    assert pad_dilated_depthwise(nn.Sequential(conv, plain)) == 1
    assert isinstance(conv, ExplicitPadConv2d) and conv.padding == (0, 0)
    assert not any(isinstance(m, ExplicitPadConv2d) for m in plain)
    torch.testing.assert_close(conv(xs), expected, rtol=1e-6, atol=1e-6)
