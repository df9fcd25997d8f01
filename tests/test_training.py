"""Unit tests of seg.training and the pieces it builds on: losses (CE ignore, OHEM, output weights),
confusion-matrix scores, poly LR, atomic checkpoint writes, sliding-window inference, W&B mode resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg.evaluation import Scores
from seg.models.checkpoint import atomic_save
from seg.models.inference import EvalSettings, predict_labels, predict_probs, slide_logits
from seg.training.loggers import resolve_wandb_mode
from seg.training.losses import SegLoss, ohem_weights
from seg.training.scheduler import PolyLR


def test_ce_ignores_255_and_weights_outputs():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 9, 11))
    target[:, :3] = 255
    outs = {k: torch.randn(2, 4, 9, 11) for k in ("out", "aux", "pam", "cam")}
    total, parts = SegLoss("ce", aux_weight=0.4)(outs, target)
    valid = target != 255
    for k, logits in outs.items():
        # mmseg's default (avg_non_ignore=False): summed over labelled pixels, divided by all pixels
        ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid], reduction="sum") / target.numel()
        assert parts[k].item() == pytest.approx(ref.item(), rel=1e-5)
    _, parts_valid = SegLoss("ce", avg_non_ignore=True)(outs, target)  # divided by the labelled pixels
    assert parts_valid["out"].item() == pytest.approx(
        F.cross_entropy(outs["out"].permute(0, 2, 3, 1)[valid], target[valid]).item(), rel=1e-5
    )
    assert total.item() == pytest.approx(
        (parts["out"] + 0.4 * parts["aux"] + parts["pam"] + parts["cam"]).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="expected \\(B, C, h, w\\)"):
        SegLoss()({"out": torch.randn(3, 4, 5, 5)}, target)


@pytest.mark.parametrize(
    "size,out_size", [((8, 16), (64, 128)), ((5, 7), (33, 61)), ((9, 11), (9, 11)), ((16, 16), (8, 12))]
)
def test_loss_resizes_like_interpolate_then_cross_entropy(size, out_size):
    """The fused resize + CE equals F.interpolate(bilinear, align_corners=False) + F.cross_entropy, value
    and gradient, for up-, down-, odd-ratio and no resizing; small blocks force several row blocks."""
    from seg.training import losses

    torch.manual_seed(0)
    x = torch.randn(3, 5, *size, requires_grad=True)
    target = torch.randint(0, 5, (3, *out_size))
    target[:, :2] = 255
    target[1, :, -3:] = 255
    ref = (
        F.cross_entropy(
            F.interpolate(x, out_size, mode="bilinear", align_corners=False), target, ignore_index=255, reduction="sum"
        )
        / target.numel()
    )
    (g_ref,) = torch.autograd.grad(ref, x)
    for chunk in (losses.LOSS_CHUNK_BYTES, 4 * 3 * 5 * out_size[1] * 3):  # one block / blocks of 3 rows
        old, losses.LOSS_CHUNK_BYTES = losses.LOSS_CHUNK_BYTES, chunk
        try:
            total, parts = SegLoss("ce", aux_weight=0.4)({"out": x, "aux": x}, target)
            (g,) = torch.autograd.grad(total, x)
        finally:
            losses.LOSS_CHUNK_BYTES = old
        assert parts["out"].item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(g, 1.4 * g_ref, rtol=1e-4, atol=1e-7)


def test_loss_gradcheck_and_all_ignored():
    from seg.training.losses import cross_entropy, ohem_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 9, 7))
    target[0, 0] = 255
    for avg_non_ignore in (False, True):
        assert torch.autograd.gradcheck(lambda v: cross_entropy(v, target, avg_non_ignore=avg_non_ignore), (x,))
        assert torch.autograd.gradcheck(
            lambda v: ohem_cross_entropy(v, target, min_kept=3, avg_non_ignore=avg_non_ignore), (x,)
        )
    # a label outside [0, C) that is not the ignore index is an error, never trained on silently
    with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
        cross_entropy(x, torch.full((2, 9, 7), 3))
    # no labelled pixel: 0 and a zero gradient, not NaN (F.cross_entropy would give NaN)
    for avg_non_ignore in (False, True):
        x.grad = None
        loss = cross_entropy(x, torch.full((2, 9, 7), 255), avg_non_ignore=avg_non_ignore)
        loss.backward()
        assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0


def test_loss_bf16_logits_get_bf16_grad_and_fp32_loss():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8).bfloat16().requires_grad_()
    target = torch.randint(0, 4, (2, 32, 32))
    total, _ = SegLoss()({"out": x}, target)
    total.backward()
    assert total.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = F.cross_entropy(F.interpolate(x.float(), (32, 32), mode="bilinear"), target)
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while running fn()."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_loss_saves_no_full_resolution_logits():
    """The point of the fused loss: for 4 outputs, backward keeps low-resolution logits + one value per pixel,
    where F.interpolate + F.cross_entropy keeps (B, C, H, W) fp32 tensors per output."""
    torch.manual_seed(0)
    b, c, h, w, up = 2, 19, 16, 32, 8
    outs = {k: torch.randn(b, c, h, w, requires_grad=True) for k in ("out", "aux", "pam", "cam")}
    target = torch.randint(0, c, (b, h * up, w * up))
    full = b * c * h * up * w * up * 4  # one full-resolution fp32 logits tensor

    def naive():
        sum(F.cross_entropy(F.interpolate(v, scale_factor=up, mode="bilinear"), target) for v in outs.values())

    fused = _saved_bytes(lambda: SegLoss()(outs, target))
    assert _saved_bytes(naive) > 4 * full
    assert fused < full / 2, (fused, full)


def test_ohem_keeps_hard_pixels_as_mmseg():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10, 10) * 3
    target = torch.randint(0, 3, (2, 10, 10))
    target[0, 0] = 255
    prob = logits.softmax(1).gather(1, target.clamp(max=2).unsqueeze(1)).squeeze(1)
    valid = target != 255
    # threshold mode: keep p < 0.7 unless fewer than min_kept*batch would be kept
    w = ohem_weights(logits, target, thresh=0.7, min_kept=5)
    assert torch.equal(w.bool(), valid & (prob < 0.7))
    # a large min_kept raises the threshold to the (min_kept*B)-th smallest probability
    w = ohem_weights(logits, target, thresh=0.7, min_kept=80)
    kth = prob[valid].sort().values[160]
    assert torch.equal(w.bool(), valid & (prob < max(kth, torch.tensor(0.7))))
    assert not w[~valid].any()
    total, parts = SegLoss("ohem", ohem_thresh=0.7, ohem_min_kept=5)({"out": logits, "aux": logits}, target)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert parts["out"].item() == pytest.approx((ce * (valid & (prob < 0.7))).mean().item(), rel=1e-5)
    ce_aux = F.cross_entropy(logits, target, ignore_index=255, reduction="sum") / target.numel()
    assert parts["aux"].item() == pytest.approx(ce_aux.item(), rel=1e-5)
    # avg_non_ignore=True: the same kept-pixel sum over the labelled pixels, for OHEM and the plain-CE aux alike
    _, parts_valid = SegLoss("ohem", ohem_thresh=0.7, ohem_min_kept=5, avg_non_ignore=True)(
        {"out": logits, "aux": logits}, target
    )
    n_valid = valid.sum().item()
    assert parts_valid["out"].item() == pytest.approx((ce * (valid & (prob < 0.7))).sum().item() / n_valid, rel=1e-5)
    assert parts_valid["aux"].item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-5
    )
    # at feature resolution: weights and loss follow the bilinearly resized logits, as in mmseg
    small = torch.randn(2, 3, 5, 5, requires_grad=True)
    up = F.interpolate(small, (10, 10), mode="bilinear", align_corners=False)
    prob_up = up.softmax(1).gather(1, target.clamp(max=2).unsqueeze(1)).squeeze(1)
    assert torch.equal(ohem_weights(small, target, thresh=0.7, min_kept=5).bool(), valid & (prob_up < 0.7))
    _, parts = SegLoss("ohem", ohem_thresh=0.7, ohem_min_kept=5)({"out": small}, target)
    ce_up = F.cross_entropy(up, target, ignore_index=255, reduction="none")
    ref = (ce_up * (valid & (prob_up < 0.7))).mean()
    assert parts["out"].item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(torch.autograd.grad(parts["out"], small)[0], torch.autograd.grad(ref, small)[0])


def test_metrics_match_bincount_reference():
    rng = np.random.default_rng(0)
    m = Scores(num_classes=4)
    conf = np.zeros((4, 4), np.int64)
    for _ in range(3):
        t = rng.integers(0, 4, (2, 7, 9))
        t[t == 3] = 255  # class 3 never in GT
        p = rng.integers(0, 3, (2, 7, 9))  # nor predicted -> NaN IoU, excluded from the mean
        m.update(torch.from_numpy(p), torch.from_numpy(t))
        v = t != 255
        conf += np.bincount(4 * t[v] + p[v], minlength=16).reshape(4, 4)
    res = m.sync().metrics(["a", "b", "c", "d"])
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert np.isnan(res["per_class_IoU"]["d"]) and res["num_images"] == 6
    assert res["mIoU"] == pytest.approx(np.nanmean(iou[:3]))
    assert res["aAcc"] == pytest.approx(np.diag(conf).sum() / conf.sum())
    assert res["mAcc"] == pytest.approx(np.nanmean(np.diag(conf)[:3] / conf.sum(1)[:3]))
    assert m.counts.sum(0).tolist() == [np.diag(conf).tolist(), conf.sum(1).tolist(), conf.sum(0).tolist()]
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))


def test_poly_lr_and_state_roundtrip():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = PolyLR(opt, max_iters=10, power=0.9, min_lr=1e-4)
    for _ in range(4):
        opt.step()
        sched.step()
    # iteration 4 of 10: mmengine's PolyLR decays over max_iters - 1 steps (the last iteration trains at min_lr)
    assert opt.param_groups[0]["lr"] == pytest.approx((0.01 - 1e-4) * (1 - 4 / 9) ** 0.9 + 1e-4)
    opt2 = torch.optim.SGD([p], lr=0.01)
    sched2 = PolyLR(opt2, max_iters=10)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(10):
        opt.step(), sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_atomic_save_replaces_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    assert torch.load(path)["step"] == 2

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"step": 3, "x": Boom()}, path)
    assert torch.load(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_slide_inference_equals_whole_for_pointwise_model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        whole = conv(x)
        slide = slide_logits(conv, x, 5, crop_size=(16, 24), stride=(10, 13))
        assert torch.allclose(slide, whole, atol=1e-5)
        p = predict_probs(conv, x, 5, mode="slide", crop_size=(16, 24), stride=(10, 13), scales=(1.0,), flip=True)
        assert torch.allclose(p, whole.softmax(1), atol=1e-5)  # a pointwise model is flip-equivariant
        p = predict_probs(conv, x, 5, scales=(0.5, 1.5))
        assert p.shape == (2, 5, 45, 61) and torch.allclose(p.sum(1), torch.ones(2, 45, 61), atol=1e-5)


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "off"
    assert resolve_wandb_mode("offline") == "offline" and resolve_wandb_mode("off") == "off"


def test_predict_labels_equals_argmax_of_probabilities():
    from seg.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "resnet18", "fcn", 4, backbone_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}, channels=8
    ).eval()
    x = torch.randn(2, 3, 40, 56)
    fn = lambda images: model(images)["out"]  # noqa: E731
    with torch.no_grad():
        for settings in (EvalSettings(4), EvalSettings(4, flip=True)):  # single pass; averaged probabilities
            probs = predict_probs(fn, x, 4, settings.mode, scales=settings.scales, flip=settings.flip)
            assert torch.equal(predict_labels(fn, x, settings), probs.argmax(1))
