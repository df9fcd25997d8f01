"""The augmentation recipe (alignment, mask values, cat_max_ratio) and the unpadded DDP sampler."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from seg.data import UnpaddedDistributedSampler, build_eval_transform, build_train_transform
from seg.data.rows import RowReader
from seg.data.seeding import reseed_transform
from seg.data.transforms import (
    CatMaxRandomCrop,
    NormalizeToTensor,
    PhotoMetricDistortion,
    RandomRescale,
    RandomRescaleCrop,
    nearest_index,
    resize_region,
    rows_needed,
)

COLOURS = np.array([(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)], np.uint8)


def _scene(h: int = 45, w: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric class layout (odd size) and an image whose colour encodes the class; ignore is grey."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx * 3 // w) + 3 * (yy * 2 // h) * (xx > w // 4)).astype(np.uint8) % 5
    mask[(xx - 10) ** 2 + (yy - 30) ** 2 < 36] = 255
    image = np.full((h, w, 3), 128, np.uint8)
    image[mask != 255] = COLOURS[mask[mask != 255]]
    return image, mask


def _decode(image: np.ndarray) -> np.ndarray:
    """Class of each pixel from its colour (nearest palette colour)."""
    d = np.abs(image[:, :, None, :].astype(np.int32) - COLOURS[None, None].astype(np.int32)).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("scale", [(60, 80), None])
def test_train_recipe_keeps_image_and_mask_aligned(scale):
    image, mask = _scene()
    t = build_train_transform(crop_size=(40, 50), scale=scale, photometric=False, normalize=False, seed=1)
    t.transforms[0].interpolation = cv2.INTER_NEAREST  # exact colours -> exact correspondence check
    shapes, flips = set(), 0
    for _ in range(200):
        out = t(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape == (40, 50, 3) and m.shape == (40, 50) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 1, 2, 3, 4, 255}
        valid = m != 255
        np.testing.assert_array_equal(_decode(img)[valid], m[valid])
        pad = (img == 0).all(-1)  # padding: image 0 and mask 255
        assert (m[pad] == 255).all()
        shapes.add(pad.any())
        flips += bool(t.transforms[1].params)  # HorizontalFlip records that it ran
    assert shapes == {True, False}  # both padded (small scales) and unpadded crops occurred
    assert 40 < flips < 160


def test_train_recipe_bilinear_and_photometric_masks_stay_nearest():
    image, mask = _scene()
    t = build_train_transform(crop_size=(40, 50), scale=(60, 80), seed=2)  # the full recipe as used
    assert isinstance(t.transforms[2], PhotoMetricDistortion)
    for _ in range(100):
        out = t(image=image, mask=mask)
        assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 40, 50)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, 4, 255}
    # the image-only steps never touch the mask: with photometric distortion, colours still decode right
    t2 = build_train_transform(crop_size=(40, 50), scale=(60, 80), normalize=False, seed=3)
    t2.transforms[0].interpolation = cv2.INTER_NEAREST
    t2.transforms[2] = PhotoMetricDistortion(
        brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0
    )
    reseed_transform(t2, 3)
    out = t2(image=image, mask=mask)
    valid = out["mask"] != 255
    agree = (_decode(out["image"])[valid] == out["mask"][valid]).mean()
    assert agree > 0.97  # hue/saturation round trips through HSV are not bit exact


def test_rescale_keeps_ratio_like_mmcv():
    t = RandomRescale(scale=(1024, 2048), ratio_range=(1.0, 1.0))
    out = t(image=np.zeros((500, 1000, 3), np.uint8), mask=np.zeros((500, 1000), np.uint8))
    assert out["image"].shape[:2] == (1024, 2048) and out["mask"].shape == (1024, 2048)
    out = t(image=np.zeros((683, 512, 3), np.uint8), mask=np.zeros((683, 512), np.uint8))  # portrait
    assert out["image"].shape[:2] == (1366, 1024)  # short edge 1024 binds (long 1366 <= 2048)
    t = RandomRescale(scale=(512, 2048), ratio_range=(0.5, 2.0))
    t.set_random_seed(0)
    sizes = {t(image=np.zeros((300, 400, 3), np.uint8))["image"].shape[0] for _ in range(50)}
    assert min(sizes) >= 255 and max(sizes) <= 1024 and len(sizes) > 10  # short edge 512 * [0.5, 2]


def _cat_max_fraction(cat_max_ratio: float, draws: int = 300) -> float:
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 80:] = 1  # a strip of class 1; most 40x40 crops see only class 0
    mask[:5] = 255
    crop = CatMaxRandomCrop(40, 40, cat_max_ratio=cat_max_ratio)
    crop.set_random_seed(0)
    ok = 0
    for _ in range(draws):
        m = crop(image=np.zeros((100, 100, 3), np.uint8), mask=mask)["mask"]
        counts = np.bincount(m[m != 255].ravel(), minlength=2)
        ok += (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75
    return ok / draws


def test_cat_max_ratio_resamples_dominated_crops():
    without, with_ = _cat_max_fraction(1.0), _cat_max_fraction(0.75)
    # one draw is accepted with p ~ 10/61; 11 draws make it ~ 0.86
    assert without < 0.3 and with_ > 0.7, (without, with_)


def test_cat_max_crop_smaller_input_and_eval_transform():
    crop = CatMaxRandomCrop(64, 64)
    out = crop(image=np.zeros((30, 70, 3), np.uint8), mask=np.zeros((30, 70), np.uint8))
    assert out["image"].shape == (30, 64, 3)
    t = build_eval_transform((60, 80), "resize")
    out = t(image=np.zeros((45, 61, 3), np.uint8), mask=np.zeros((45, 61), np.uint8))
    assert out["image"].shape == (59, 80, 3) and out["mask"].shape == (45, 61)  # mask: original size (mmseg)
    np.testing.assert_allclose(
        out["image"][0, 0], -np.array([123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375], rtol=1e-5
    )
    assert build_eval_transform((60, 80), "full")(image=np.zeros((45, 61, 3), np.uint8))["image"].shape == (45, 61, 3)
    with pytest.raises(ValueError, match="val_mode"):
        build_eval_transform((60, 80), "crop")


def test_padding_uses_fill_mask_255_not_zero():
    image, mask = _scene(20, 20)
    t = build_train_transform(crop_size=(64, 64), scale=None, scale_range=(1.0, 1.0), seed=0)
    out = t(image=image, mask=mask)
    assert (out["mask"][20:] == 255).all() and (out["mask"][:, 20:] == 255).all()
    assert (out["image"][:, 20:] == 0).all() and (out["image"][:, :, 20:] == 0).all()
    assert (out["image"][:, :20, :20] != 0).any()


def test_seeded_pipelines_repeat_and_reseed_changes_draws():
    image, mask = _scene()
    a = build_train_transform(crop_size=(30, 30), scale=(60, 80), seed=5)
    b = build_train_transform(crop_size=(30, 30), scale=(60, 80), seed=5)
    np.testing.assert_array_equal(a(image=image, mask=mask)["image"], b(image=image, mask=mask)["image"])
    reseed_transform(b, 6)
    assert not np.array_equal(a(image=image, mask=mask)["image"], b(image=image, mask=mask)["image"])


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-looking image: smooth shading plus mild texture (what the recipe sees in practice)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(
        rng.uniform(0, 255, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    ) + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "src, scale, ratios, crop",
    [
        ((45, 61), None, (0.3, 0.9), (20, 30)),  # downscale, odd sizes
        ((45, 61), None, (1.1, 2.3), (40, 50)),  # upscale, odd sizes
        ((37, 83), (50, 100), (0.5, 2.0), (33, 47)),  # a scale, both directions, crops sometimes larger
        ((64, 128), (64, 128), (2.0, 2.0), (32, 64)),  # exactly 2x
    ],
)
def test_rescale_crop_equals_resize_then_crop(src, scale, ratios, crop):
    """Resampling only the crop gives resize-then-crop's pixels: masks exactly, images within 1 grey level."""
    h, w = src
    image, mask = _smooth_image(h, w), np.random.default_rng(1).integers(0, 7, (h, w)).astype(np.uint8)
    t = RandomRescaleCrop(*crop, scale=scale, ratio_range=ratios, cat_max_ratio=0.75)
    nn = RandomRescaleCrop(*crop, scale=scale, ratio_range=ratios, interpolation=cv2.INTER_NEAREST)
    t.set_random_seed(0)
    nn.set_random_seed(0)
    seen_sizes = set()
    for _ in range(25):
        out = t(image=image, mask=mask)
        size, (x1, y1, x2, y2) = t.params["size"], t.params["box"]
        seen_sizes.add(size)
        full = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)[y1:y2, x1:x2]
        full_mask = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)[y1:y2, x1:x2]
        assert out["image"].shape == full.shape and out["mask"].shape == full_mask.shape
        np.testing.assert_array_equal(out["mask"], full_mask)
        assert np.abs(out["image"].astype(int) - full).max() <= 1
        assert np.abs(out["image"].astype(int) - full).mean() < 0.3
        out_nn = nn(image=image, mask=mask)  # nearest image: exact as well
        size, (x1, y1, x2, y2) = nn.params["size"], nn.params["box"]
        np.testing.assert_array_equal(
            out_nn["image"], cv2.resize(image, size[::-1], interpolation=cv2.INTER_NEAREST)[y1:y2, x1:x2]
        )
    assert len(seen_sizes) > (1 if ratios[0] < ratios[1] else 0)


def test_rescale_crop_sharp_edges_stay_close():
    """Worst case for the fixed-point sample positions: random noise. Still a few grey levels at most."""
    image = np.random.default_rng(2).integers(0, 256, (41, 59, 3), dtype=np.uint8)
    t = RandomRescaleCrop(30, 40, scale=None, ratio_range=(0.5, 2.0))
    t.set_random_seed(3)
    for _ in range(20):
        out = t(image=image)["image"].astype(int)
        size, (x1, y1, x2, y2) = t.params["size"], t.params["box"]
        d = np.abs(out - cv2.resize(image, size[::-1])[y1:y2, x1:x2])
        assert d.max() <= 8 and d.mean() < 1.0, (size, d.max(), d.mean())


class _TopRows:
    """A row source (`seg.data.rows.RowSource`) over a whole array, recording how far down it was read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.read = array, array.shape, 0

    def rows(self, count: int) -> np.ndarray:
        self.read = max(self.read, count)
        return self.array[:count]


def test_train_pipeline_reads_rows_with_the_draws_and_result_of_whole_arrays():
    """The `RowReader` protocol on its own (no PNG): same tensors as the whole arrays, fewer rows read; a failing
    source leaves the generators as they were; a pipeline that no longer starts with the crop declines."""
    image, mask = _smooth_image(90, 120), np.random.default_rng(0).integers(0, 5, (90, 120)).astype(np.uint8)
    reader, whole = (build_train_transform((30, 40), scale=None, seed=0) for _ in range(2))
    assert isinstance(reader, RowReader) and not isinstance(build_eval_transform((60, 80)), RowReader)
    read = []
    for i in range(20):
        source = _TopRows(image)
        out = reader.call_reading_rows(source, _TopRows(mask) if i % 2 else mask)  # a whole mask is used as is
        ref = whole(image=image, mask=mask)
        assert torch.equal(out["image"], ref["image"]) and np.array_equal(out["mask"], ref["mask"])
        read.append(source.read)
    assert min(read) < 90 and max(read) <= 90

    class Damaged(_TopRows):
        def rows(self, count: int) -> np.ndarray:
            raise ValueError("damaged")

    with pytest.raises(ValueError, match="damaged"):
        reader.call_reading_rows(Damaged(image), mask)
    assert torch.equal(reader(image=image, mask=mask)["image"], whole(image=image, mask=mask)["image"])
    reader.transforms[0].p = 0.5
    assert reader.call_reading_rows(_TopRows(image), mask) is None


def test_nearest_index_matches_opencv_for_many_sizes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        src, dst = int(rng.integers(1, 3000)), int(rng.integers(1, 5000))
        ramp = np.arange(src, dtype=np.int32)[None].repeat(2, 0)
        np.testing.assert_array_equal(
            nearest_index(src, dst, 0, dst), cv2.resize(ramp, (dst, 2), interpolation=cv2.INTER_NEAREST)[0]
        )


@pytest.mark.parametrize("cat_max_ratio", [0.75, 1.0])
def test_rescale_crop_draws_like_rescale_then_cat_max_crop(cat_max_ratio):
    """Same generator state -> same scale, same crop (cat-max re-draws included) as the two separate steps."""
    mask = np.zeros((50, 90), np.uint8)
    mask[:, 70:] = 1  # most crops see one class only: the cat-max re-draws matter
    mask[:4] = 255
    image = np.zeros((50, 90, 3), np.uint8)
    fused = A.Compose([RandomRescaleCrop(30, 40, (50, 90), (0.5, 2.0), cat_max_ratio)])
    steps = A.Compose([RandomRescale((50, 90), (0.5, 2.0)), CatMaxRandomCrop(30, 40, cat_max_ratio)])
    reseed_transform(fused, 7)
    reseed_transform(steps, 7)
    accepted = 0
    for _ in range(150):
        a, b = fused(image=image, mask=mask)["mask"], steps(image=image, mask=mask)["mask"]
        assert fused.transforms[0].params["box"] == steps.transforms[1].params["box"]
        np.testing.assert_array_equal(a, b)
        counts = np.bincount(a[a != 255], minlength=2)
        accepted += (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75
    assert (accepted > 100) if cat_max_ratio < 1 else (accepted < 75), accepted


def _pmd_reference(img: np.ndarray, beta, contrast_first, contrast, saturation, hue) -> np.ndarray:
    """mmseg's PhotoMetricDistortion arithmetic written out in float (BGR image, as mmseg holds it)."""

    def convert(x, alpha=1.0, b=0.0):
        return np.clip(x.astype(np.float32) * alpha + b, 0, 255).astype(np.uint8)

    bgr = img[:, :, ::-1].copy()
    if beta is not None:
        bgr = convert(bgr, b=beta)
    if contrast is not None and contrast_first:
        bgr = convert(bgr, alpha=contrast)
    if saturation is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=saturation)
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if hue is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if contrast is not None and not contrast_first:
        bgr = convert(bgr, alpha=contrast)
    return bgr[:, :, ::-1]


PMD_KEYS = ("beta", "contrast_first", "contrast", "saturation", "hue")


def test_photometric_lookup_tables_match_float_formula():
    image = np.random.default_rng(4).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    t = PhotoMetricDistortion()
    t.set_random_seed(0)
    for _ in range(60):
        out = t(image=image)["image"]
        np.testing.assert_array_equal(out, _pmd_reference(image, **{k: t.params[k] for k in PMD_KEYS}))


def test_photometric_draws_follow_mmseg_ranges():
    """mmseg: hue np.random.randint(-18, 18) (18 never drawn), brightness/contrast/saturation uniform, coins 1/2."""
    t = PhotoMetricDistortion()
    t.set_random_seed(0)
    draws = [t.get_params() for _ in range(4000)]
    hues = [d["hue"] for d in draws if d["hue"] is not None]
    assert min(hues) == -18 and max(hues) == 17 and len(set(hues)) == 36
    betas = [d["beta"] for d in draws if d["beta"] is not None]
    assert -32 <= min(betas) < -31 and 31 < max(betas) < 32
    for key, (lo, hi) in (("contrast", (0.5, 1.5)), ("saturation", (0.5, 1.5))):
        vals = [d[key] for d in draws if d[key] is not None]
        assert lo <= min(vals) < lo + 0.01 and hi - 0.01 < max(vals) <= hi
    for key in ("beta", "contrast", "saturation", "hue"):
        assert 0.45 < np.mean([d[key] is not None for d in draws]) < 0.55
    assert 0.45 < np.mean([d["contrast_first"] for d in draws]) < 0.55
    zero = PhotoMetricDistortion(hue_delta=0)
    zero.set_random_seed(0)
    assert {zero.get_params()["hue"] for _ in range(50)} == {None, 0}


def test_normalize_to_tensor_matches_normalize_pad_transpose():
    image, mask = _scene(21, 33)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    out = NormalizeToTensor(mean, std, pad_size=(25, 30))(image=image, mask=mask)
    img, m = out["image"], out["mask"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and img.shape == (3, 25, 33)
    expected = ((image.astype(np.float64) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(img[:, :21].numpy(), expected, atol=1e-5)
    assert (img[:, 21:] == 0).all() and m.shape == (25, 33) and (m[21:] == 255).all()
    np.testing.assert_array_equal(m[:21], mask)
    same = NormalizeToTensor(mean, std, pad_size=(5, 5))(image=image)["image"]  # no padding: written in place
    np.testing.assert_allclose(same.numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n", [1, 7, 10, 11])
@pytest.mark.parametrize("world", [2, 3])
def test_unpadded_sampler_each_index_once(n, world):
    data = list(range(n))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == data  # exactly once across ranks
    assert [len(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)] == [
        len(s) for s in shards
    ]
    # a dataset-level statistic (like a confusion matrix sum) equals the single-process one
    values = torch.arange(n, dtype=torch.float64) ** 2
    assert sum(values[s].sum() for s in shards) == values.sum()
    padded = [i for r in range(world) for i in DistributedSampler(data, num_replicas=world, rank=r, shuffle=False)]
    assert (len(padded) != n) == (n % world != 0)  # torch's sampler pads, which is what we avoid
    assert isinstance(UnpaddedDistributedSampler(data, 2, 0), DistributedSampler)  # Lightning keeps it


def test_unpadded_sampler_bad_rank():
    with pytest.raises(ValueError, match="rank 3"):
        UnpaddedDistributedSampler(list(range(5)), num_replicas=2, rank=3)


def test_resize_region_from_the_top_rows_equals_the_whole_image():
    """`rows_needed` rows from the top give exactly what the whole image gives (every interpolation, scale and
    box, including boxes at the bottom edge); fewer is refused, not silently replicated."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
        img = _smooth_image(h, w, seed=trial)
        height = int(rng.integers(4, 3 * h))
        width = max(1, round(w * height / h))
        y1 = int(rng.integers(0, height))
        y2 = int(rng.integers(y1 + 1, height + 1)) if trial % 4 else height
        x1 = int(rng.integers(0, width))
        box = (x1, y1, int(rng.integers(x1 + 1, width + 1)), y2)
        for interp in (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST, cv2.INTER_AREA):
            n = rows_needed(h, height, box, interp)
            whole = resize_region(img, (height, width), box, interp)
            top = resize_region(np.ascontiguousarray(img[:n]), (height, width), box, interp, src_size=(h, w))
            np.testing.assert_array_equal(top, whole, err_msg=f"{(h, w)} -> {(height, width)} {box} {interp}")
            if n > 1 and n < h:
                with pytest.raises(ValueError, match="rows given"):
                    resize_region(img[: n - 1], (height, width), box, interp, src_size=(h, w))
