"""The training/evaluation recipe against mmsegmentation 1.x's own code (issue 10, part B).

Golden files in tests/data/recipe/ come from ``scripts/make_recipe_golden.py`` (run with mmseg 1.2.2 /
mmengine 0.10.7 / mmcv-lite 2.1.0; see its docstring for what each file holds). mmseg is never imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg.data import SegDataModule, build_eval_transform, collate
from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg.evaluation import Scores, predict_batch
from seg.models.inference import EvalSettings, predict_probs, tta_size
from seg.training.losses import SegLoss, cross_entropy, ohem_cross_entropy, ohem_weights
from seg.training.scheduler import PolyLR

DATA = Path(__file__).resolve().parent / "data" / "recipe"


@pytest.fixture(scope="module")
def loss_golden() -> dict:
    return torch.load(DATA / "loss.pt", weights_only=True)


@pytest.fixture(scope="module")
def eval_golden() -> dict:
    return torch.load(DATA / "eval.pt", weights_only=True)


# -- 1. cross-entropy normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("kind", ["ce", "ohem5", "ohem70"])
def test_loss_and_gradient_match_mmseg(loss_golden, kind, avg_non_ignore):
    """mmseg: resize(bilinear) -> [OHEMPixelSampler] -> CrossEntropyLoss(avg_non_ignore); value and gradient
    w.r.t. the low-resolution logits."""
    g = loss_golden
    tag = f"{kind}_{'nonignore' if avg_non_ignore else 'all'}"
    target = g["target"].long()
    x = g["logits"].clone().requires_grad_(True)
    if kind == "ce":
        loss = cross_entropy(x, target, avg_non_ignore=avg_non_ignore)
        total, parts = SegLoss("ce", avg_non_ignore=avg_non_ignore)({"out": g["logits"]}, target)
    else:
        min_kept = int(kind[4:])
        assert torch.equal(ohem_weights(g["logits"], target, 0.7, min_kept).byte(), g[f"{kind}_weight"])
        loss = ohem_cross_entropy(x, target, 0.7, min_kept, avg_non_ignore=avg_non_ignore)
        total, parts = SegLoss("ohem", ohem_thresh=0.7, ohem_min_kept=min_kept, avg_non_ignore=avg_non_ignore)(
            {"out": g["logits"]}, target
        )
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(loss, g[tag], rtol=2e-6, atol=0)
    torch.testing.assert_close(parts["out"], g[tag], rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, g[f"{tag}_grad"], rtol=1e-5, atol=1e-8)


def test_default_normalisation_is_all_pixels(loss_golden):
    """The default (mmseg's recipe) is N_valid / N_all times the labelled-pixel mean, for CE and OHEM alike."""
    g = loss_golden
    ratio = g["n_all"] / g["n_valid"]
    assert ratio > 1.5  # the golden mask has ~45% ignored pixels: the two conventions are far apart
    target = g["target"].long()
    for kind in ("ce", "ohem5"):
        loss = SegLoss("ohem" if kind != "ce" else "ce", ohem_min_kept=5)({"out": g["logits"]}, target)[1]["out"]
        assert loss.item() == pytest.approx(g[f"{kind}_all"].item(), rel=2e-6)
        assert g[f"{kind}_nonignore"].item() == pytest.approx(ratio * g[f"{kind}_all"].item(), rel=1e-5)


# -- 2. evaluation protocol -----------------------------------------------------------------------------------
def _eval_samples(eval_golden) -> list[dict]:
    t = build_eval_transform(tuple(eval_golden["scale"])[::-1], "resize")  # golden: mmseg's (W, H)
    out = []
    for i, s in enumerate(eval_golden["samples"]):
        r = t(image=s["image"].numpy(), mask=s["mask"].numpy())
        out.append(
            {
                "image": torch.from_numpy(r["image"].transpose(2, 0, 1).copy()),
                "mask": torch.from_numpy(r["mask"]).long(),
                "path": f"s{i}",
            }
        )
    return out


def test_eval_transform_resizes_image_only_as_mmseg(eval_golden):
    """mmseg test pipeline: Resize(scale, keep_ratio=True) on the image (cv2 bilinear), ground truth untouched."""
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    for s, sample in zip(eval_golden["samples"], _eval_samples(eval_golden)):
        resized = s["resized"].numpy().astype(np.float64)  # mmseg's uint8 output
        assert tuple(sample["image"].shape[1:]) == resized.shape[:2]
        np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), (resized - mean) / std, atol=1e-4)
        assert torch.equal(sample["mask"], s["mask"].long())  # original size and values
    t = build_eval_transform((512, 2048), "resize")  # the real ADE20K test scale
    for (h, w), expected in zip(eval_golden["ade_sizes"], eval_golden["ade_resized_hw"]):
        assert list(t(image=np.zeros((h, w, 3), np.uint8))["image"].shape[:2]) == expected, (h, w)


@pytest.mark.parametrize("batched", [False, True])
def test_eval_predictions_and_iou_match_mmseg(eval_golden, batched):
    """Logits at the resized size -> bilinear to the original size -> argmax, scored against the original mask:
    per-pixel equal to mmseg's postprocess_result, and the confusion-matrix areas equal IoUMetric's. batched=True
    puts both differently sized originals in one padded batch (the per-sample path)."""
    by_shape = {tuple(s["logits"].shape[-2:]): s["logits"] for s in eval_golden["samples"]}
    logits = lambda x: by_shape[tuple(x.shape[-2:])].expand(x.shape[0], -1, -1, -1)  # noqa: E731  fails on padding
    settings = EvalSettings(eval_golden["num_classes"])
    samples = _eval_samples(eval_golden)
    batches = [collate(samples)] if batched else [collate([s]) for s in samples]
    metrics = Scores(eval_golden["num_classes"])
    preds = []
    with torch.no_grad():
        for batch in batches:
            p = predict_batch(logits, batch, settings)
            assert p.shape == batch["mask"].shape
            metrics.update(p, batch["mask"])
            preds += [p[i, :h, :w] for i, (h, w) in enumerate(batch["ori_shape"].tolist())]
    for p, s in zip(preds, eval_golden["samples"]):
        assert torch.equal(p, s["pred"].long())
    conf = metrics.sync().confmat.double()
    tp, gt, pr = conf.diag(), conf.sum(1), conf.sum(0)
    torch.testing.assert_close(tp, eval_golden["area_intersect"].double())
    torch.testing.assert_close(gt, eval_golden["area_label"].double())
    torch.testing.assert_close(pr, eval_golden["area_pred"].double())
    torch.testing.assert_close(gt + pr - tp, eval_golden["area_union"].double())
    res = metrics.metrics()  # mmseg reports percent, rounded to 2 decimals
    assert 100 * res["mIoU"] == pytest.approx(eval_golden["mIoU"], abs=5e-3)
    assert 100 * res["aAcc"] == pytest.approx(eval_golden["aAcc"], abs=5e-3)


def test_ade20k_val_batch_keeps_original_masks(tmp_path):
    """Through the real data module: ADE20K val images are resized to fit the test scale, masks are not."""
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for name, (h, w) in (("a", (23, 31)), ("b", (27, 19))):
        cv2.imwrite(str(root / f"images/validation/{name}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(str(root / f"annotations/validation/{name}.png"), rng.integers(0, 151, (h, w), dtype=np.uint8))
    dm = SegDataModule("ade20k", str(tmp_path), scale=(12, 48), val_batch_size=2, num_workers=0)
    b = next(iter(dm.val_dataloader()))
    # keep-ratio fit: long edge <= 48, short edge <= 12 (mmcv rescale_size), as the golden's mmseg Resize gave
    assert b["img_shape"].tolist() == [[12, 16], [17, 12]]
    assert b["ori_shape"].tolist() == [[23, 31], [27, 19]]
    assert b["image"].shape == (2, 3, 17, 16) and b["mask"].shape == (2, 27, 31)
    assert (b["mask"][0, 23:] == 255).all() and (b["mask"][1, :, 19:] == 255).all()


# -- 3. multi-scale + flip sizes ------------------------------------------------------------------------------
def test_tta_sizes_match_mmseg_test_time_aug():
    cases = json.loads((DATA / "tta.json").read_text())["cases"]
    half = 0
    for c in cases:
        for r, expected in zip(c["scales"], c["sizes_hw"]):
            assert list(tta_size(tuple(c["ori_hw"]), r)) == expected, (c["ori_hw"], r)
            half += any((v * r) % 1 == 0.5 for v in c["ori_hw"])
    assert half >= 5  # x.5 cases, where Python's round() would differ, are covered


def test_predict_probs_runs_tta_sizes_from_the_original():
    """The network sees, per scale (and flip), the test-scale input resized to mmseg's size for the original;
    probabilities come back at the original size."""
    conv = torch.nn.Conv2d(3, 4, 1)
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return conv(x)

    ori, scales = (45, 61), (0.5, 0.75, 1.25)
    x = torch.randn(1, 3, 12, 16)  # the test-scale image (a keep-ratio downscale of the original)
    with torch.no_grad():
        p = predict_probs(fn, x, 4, scales=scales, flip=True, out_size=ori)
    assert p.shape == (1, 4, *ori)
    assert seen == [tta_size(ori, r) for r in scales for _ in range(2)]
    assert seen[0] == (23, 31)  # 22.5 -> 23, 30.5 -> 31 (mmcv int(x + 0.5); round() gives 22, 30)


def test_cli_options(tmp_path):
    """--model.avg_non_ignore reaches the loss; TTA switches the eval data to original images."""
    from seg.data.synthetic import write_demo
    from seg.training.cli import SegCLI

    root = tmp_path / "data"
    write_demo(root, splits={"train": 2, "val": 1}, size=32)
    config = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    args = [
        "--config",
        str(config),
        "--wandb=off",
        f"--trainer.default_root_dir={tmp_path}",
        f"--data.root={root}",
        "--data.generate_demo=false",
        "--trainer.accelerator=cpu",
        "--data.val_mode=resize",
    ]
    cli = SegCLI(args=args + ["--model.avg_non_ignore=true", "--model.eval_flip=true"])
    assert cli.model.criterion.avg_non_ignore is True and cli.datamodule.hparams.val_mode == "full"
    cli = SegCLI(args=args)
    assert cli.model.criterion.avg_non_ignore is False and cli.datamodule.hparams.val_mode == "resize"


# -- 4. PolyLR ------------------------------------------------------------------------------------------------
def test_poly_lr_matches_mmengine():
    for run in json.loads((DATA / "poly.json").read_text())["runs"]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=run["base_lr"], momentum=0.9)
        sched = PolyLR(opt, max_iters=run["max_iters"], power=run["power"], min_lr=run["eta_min"])
        lrs = []
        for _ in run["lrs"]:  # as Lightning runs it: iteration with the current lr, then one scheduler step
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx(run["lrs"], rel=1e-12, abs=1e-15), run
        if run["max_iters"] > 1:  # the last iteration trains with eta_min
            assert lrs[run["max_iters"] - 1] == pytest.approx(run["eta_min"], abs=1e-15)
