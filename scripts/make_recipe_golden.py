"""Generate the training/evaluation-recipe golden files in tests/data/recipe/ from mmsegmentation 1.x itself.

NOT part of the seg package and NOT run in CI: it imports mmsegmentation 1.2.2 / mmengine / mmcv-lite (see
``scripts/make_mmseg_golden.py`` for the venv). Run from the repository root:

    /work/mmenv/bin/python scripts/make_recipe_golden.py        # writes tests/data/recipe/

``tests/test_recipe_golden.py`` compares seg against these files. What each pins (issue 10, part B):

``loss.pt``
    Low-resolution logits (2, 3, 5, 7) and a (2, 11, 13) mask with ignored (255) pixels. mmseg's
    ``loss_by_feat`` path: ``resize`` (bilinear, align_corners=False) to the mask size, then
    ``CrossEntropyLoss(avg_non_ignore=False|True)`` (no class weights) with and without the
    ``OHEMPixelSampler`` (thresh 0.7; min_kept 5 = threshold-bound, 70 = k-th-probability-bound) weight.
    Stores each loss value and its gradient w.r.t. the low-resolution logits, plus the OHEM weights.
``eval.pt``
    The ADE20K test protocol on two odd-sized "originals" (landscape and portrait) with a small test scale:
    mmseg's ``Resize(scale, keep_ratio=True)`` output image (uint8, cv2), random logits at that size,
    ``BaseSegmentor.postprocess_result`` predictions at the original size (logits resized bilinearly back),
    and ``IoUMetric`` over both images against the original-size ground truth. Also the resized (W, H) that
    ``Resize(scale=(2048, 512), keep_ratio=True)`` gives for several real ADE20K-like sizes.
``tta.json``
    mmseg 1.x ``TestTimeAug`` sizes: the (H, W) that ``Resize(scale_factor=r, keep_ratio=True)`` gives when
    applied to the *original* image, for several sizes and scale lists (with x.5 rounding cases).
``poly.json``
    mmengine ``PolyLR(eta_min, power, begin=0, end=max_iters, by_epoch=False)``: the lr each iteration trains
    with, as mmengine's runner steps it (once after every iteration), past the end of the schedule.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "/work/shared/tools")
import mmcv_ops_stub  # noqa: E402

mmcv_ops_stub.install()
warnings.filterwarnings("ignore")

from mmengine.registry import init_default_scope  # noqa: E402

init_default_scope("mmseg")

from mmengine.optim.scheduler import PolyLR  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.datasets.transforms import Resize  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.models.losses import CrossEntropyLoss  # noqa: E402
from mmseg.models.segmentors.base import BaseSegmentor  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.structures.sampler import OHEMPixelSampler  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "recipe"
IGNORE = 255


def loss_golden() -> dict:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 5, 7, generator=g) * 4).float()  # confident: some true-class probabilities > 0.7
    target = torch.randint(0, 3, (2, 11, 13), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = IGNORE  # ~30% ignored
    target[1, :4] = IGNORE  # a band of ignore, as padded crops have
    out = {"logits": logits, "target": target.to(torch.uint8)}

    class Ctx:  # the decode head the sampler reads ignore_index from
        ignore_index = IGNORE

    for avg_non_ignore in (False, True):
        ce = CrossEntropyLoss(avg_non_ignore=avg_non_ignore)
        tag = "nonignore" if avg_non_ignore else "all"
        x = logits.clone().requires_grad_(True)
        up = resize(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = ce(up, target, weight=None, ignore_index=IGNORE)
        loss.backward()
        out[f"ce_{tag}"], out[f"ce_{tag}_grad"] = loss.detach(), x.grad.clone()
        for min_kept in (5, 70):
            sampler = OHEMPixelSampler(Ctx(), thresh=0.7, min_kept=min_kept)
            x = logits.clone().requires_grad_(True)
            up = resize(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
            weight = sampler.sample(up, target[:, None])
            loss = ce(up, target, weight=weight, ignore_index=IGNORE)
            loss.backward()
            out[f"ohem{min_kept}_weight"] = weight.to(torch.uint8)
            out[f"ohem{min_kept}_{tag}"], out[f"ohem{min_kept}_{tag}_grad"] = loss.detach(), x.grad.clone()
    out["n_all"], out["n_valid"] = target.numel(), int((target != IGNORE).sum())
    return out


class _Seg:
    """What ``BaseSegmentor.postprocess_result`` reads from ``self`` for a multi-class head."""

    align_corners = False


def eval_golden() -> dict:
    rng = np.random.default_rng(0)
    num_classes, scale = 3, (48, 12)  # test scale (W, H), a small stand-in for ADE20K's (2048, 512)
    samples = []
    preds_all, metric = [], IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    for ori_hw in ((23, 31), (27, 19)):  # landscape (down-scaled to fit H 16) and portrait
        img = rng.integers(0, 256, (*ori_hw, 3), dtype=np.uint8)
        # coarse blobs so that predictions and labels agree on part of the image (IoU strictly between 0 and 1)
        gt = np.kron(rng.integers(0, num_classes, (ori_hw[0] // 6 + 1, ori_hw[1] // 6 + 1)), np.ones((6, 6)))
        gt = gt[: ori_hw[0], : ori_hw[1]].astype(np.uint8)
        gt[rng.random(ori_hw) < 0.15] = IGNORE
        res = Resize(scale=scale, keep_ratio=True)({"img": img, "img_shape": ori_hw, "ori_shape": ori_hw})
        resized = res["img"]
        h, w = resized.shape[:2]
        # logits that follow the (nearest-resized) labels plus noise, so the metric is informative
        small_gt = torch.from_numpy(gt.astype(np.int64)).clamp(max=num_classes - 1)
        small_gt = torch.nn.functional.interpolate(small_gt[None, None].float(), (h, w), mode="nearest")[0, 0]
        logits = torch.nn.functional.one_hot(small_gt.long(), num_classes).permute(2, 0, 1).float() * 2
        logits = (logits + torch.from_numpy(rng.normal(size=(num_classes, h, w))).float())[None]
        ds = SegDataSample()
        ds.set_metainfo({"ori_shape": ori_hw, "img_shape": (h, w), "padding_size": [0, 0, 0, 0]})
        ds.gt_sem_seg = PixelData(data=torch.from_numpy(gt.astype(np.int64))[None])
        ds = BaseSegmentor.postprocess_result(_Seg(), logits, [ds])[0]
        pred = ds.pred_sem_seg.data[0]
        metric.process([], [ds.to_dict()])
        samples.append(
            {
                "image": torch.from_numpy(img),
                "mask": torch.from_numpy(gt),
                "resized": torch.from_numpy(resized),
                "logits": logits,
                "pred": pred.to(torch.uint8),
            }
        )
        preds_all.append(pred)
    # per-class IoU/Acc of IoUMetric (percent, rounded by mmseg's table) + the raw areas for an exact check
    results = metric.results
    areas = [torch.stack([r[k] for r in results]).sum(0) for k in range(4)]  # intersect, union, pred, label
    summary = metric.compute_metrics(results)
    ade_sizes = [(512, 683), (375, 500), (1536, 2048), (256, 256), (511, 767), (333, 2000), (2048, 1536)]
    ade = [
        list(
            Resize(scale=(2048, 512), keep_ratio=True)(
                {"img": np.zeros((*hw, 1), np.uint8), "img_shape": hw, "ori_shape": hw}
            )["img"].shape[:2]
        )
        for hw in ade_sizes
    ]
    return {
        "num_classes": num_classes,
        "scale": scale,
        "samples": samples,
        "area_intersect": areas[0],
        "area_union": areas[1],
        "area_pred": areas[2],
        "area_label": areas[3],
        "mIoU": float(summary["mIoU"]),
        "aAcc": float(summary["aAcc"]),
        "ade_sizes": ade_sizes,
        "ade_resized_hw": ade,
    }


def tta_golden() -> dict:
    cases = []
    sizes = [(512, 683), (1024, 2048), (7, 5), (13, 21), (45, 61), (375, 500), (333, 2001), (2, 3)]
    scale_lists = [[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], [0.3, 0.625, 1.125, 2.0], [0.9, 1.1]]
    for hw in sizes:
        for scales in scale_lists:
            out = []
            for r in scales:
                img = np.zeros((*hw, 1), np.uint8)
                res = Resize(scale_factor=float(r), keep_ratio=True)({"img": img, "img_shape": hw, "ori_shape": hw})
                out.append(list(res["img"].shape[:2]))
            cases.append({"ori_hw": list(hw), "scales": scales, "sizes_hw": out})
    return {"cases": cases}


def poly_golden() -> dict:
    runs = []
    for base_lr, max_iters, power, eta_min in ((0.01, 10, 0.9, 1e-4), (0.05, 7, 1.0, 0.0), (0.01, 1, 0.9, 1e-4)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9)
        sched = PolyLR(opt, eta_min=eta_min, power=power, begin=0, end=max_iters, by_epoch=False)
        lrs = []
        for _ in range(max_iters + 3):  # mmengine's runner: train iteration, then ParamSchedulerHook steps
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        runs.append({"base_lr": base_lr, "max_iters": max_iters, "power": power, "eta_min": eta_min, "lrs": lrs})
    return {"runs": runs}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(loss_golden(), OUT / "loss.pt")
    torch.save(eval_golden(), OUT / "eval.pt")
    for name, data in (("tta.json", tta_golden()), ("poly.json", poly_golden())):  # one case per line
        ((key, rows),) = data.items()
        (OUT / name).write_text(f'{{"{key}": [\n' + ",\n".join(json.dumps(r) for r in rows) + "\n]}\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(OUT.parents[2])}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
