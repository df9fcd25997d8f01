"""The augmentation recipe (alignment, mask values, cat_max_ratio) and the unpadded DDP sampler."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from seg.data import UnpaddedDistributedSampler, build_eval_transform, build_train_transform
from seg.data.transforms import CatMaxRandomCrop, PhotoMetricDistortion, RandomRescale, reseed

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


@pytest.mark.parametrize('base_size', [(80, 60), None])
def test_train_recipe_keeps_image_and_mask_aligned(base_size):
    image, mask = _scene()
    t = build_train_transform(crop_size=(40, 50), base_size=base_size, photometric=False, normalize=False, seed=1)
    t.transforms[0].interpolation = cv2.INTER_NEAREST  # exact colours -> exact correspondence check
    shapes, flips = set(), 0
    for _ in range(200):
        out = t(image=image, mask=mask)
        img, m = out['image'], out['mask']
        assert img.shape == (40, 50, 3) and m.shape == (40, 50) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 1, 2, 3, 4, 255}
        valid = m != 255
        np.testing.assert_array_equal(_decode(img)[valid], m[valid])
        pad = (img == 0).all(-1)  # padding: image 0 and mask 255
        assert (m[pad] == 255).all()
        shapes.add(pad.any())
        flips += bool(t.transforms[2].params)  # HorizontalFlip records that it ran
    assert shapes == {True, False}  # both padded (small scales) and unpadded crops occurred
    assert 40 < flips < 160


def test_train_recipe_bilinear_and_photometric_masks_stay_nearest():
    image, mask = _scene()
    t = build_train_transform(crop_size=(40, 50), base_size=(80, 60), seed=2)  # the full recipe as used
    assert isinstance(t.transforms[3], PhotoMetricDistortion)
    for _ in range(100):
        out = t(image=image, mask=mask)
        assert out['image'].dtype == np.float32 and out['image'].shape == (40, 50, 3)
        assert set(np.unique(out['mask'])) <= {0, 1, 2, 3, 4, 255}
    # the image-only steps never touch the mask: with photometric distortion, colours still decode right
    t2 = build_train_transform(crop_size=(40, 50), base_size=(80, 60), normalize=False, seed=3)
    t2.transforms[0].interpolation = cv2.INTER_NEAREST
    t2.transforms[3] = PhotoMetricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1),
                                             hue_delta=0)
    reseed(t2, 3)
    out = t2(image=image, mask=mask)
    valid = out['mask'] != 255
    agree = (_decode(out['image'])[valid] == out['mask'][valid]).mean()
    assert agree > 0.97  # hue/saturation round trips through HSV are not bit exact


def test_rescale_keeps_ratio_like_mmcv():
    t = RandomRescale(base_size=(2048, 1024), ratio_range=(1.0, 1.0))
    out = t(image=np.zeros((500, 1000, 3), np.uint8), mask=np.zeros((500, 1000), np.uint8))
    assert out['image'].shape[:2] == (1024, 2048) and out['mask'].shape == (1024, 2048)
    out = t(image=np.zeros((683, 512, 3), np.uint8), mask=np.zeros((683, 512), np.uint8))  # portrait
    assert out['image'].shape[:2] == (1366, 1024)  # short edge 1024 binds (long 1366 <= 2048)
    t = RandomRescale(base_size=(2048, 512), ratio_range=(0.5, 2.0))
    t.set_random_seed(0)
    sizes = {t(image=np.zeros((300, 400, 3), np.uint8))['image'].shape[0] for _ in range(50)}
    assert min(sizes) >= 255 and max(sizes) <= 1024 and len(sizes) > 10  # short edge 512 * [0.5, 2]


def _cat_max_fraction(cat_max_ratio: float, draws: int = 300) -> float:
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 80:] = 1  # a strip of class 1; most 40x40 crops see only class 0
    mask[:5] = 255
    crop = CatMaxRandomCrop(40, 40, cat_max_ratio=cat_max_ratio)
    crop.set_random_seed(0)
    ok = 0
    for _ in range(draws):
        m = crop(image=np.zeros((100, 100, 3), np.uint8), mask=mask)['mask']
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
    assert out['image'].shape == (30, 64, 3)
    t = build_eval_transform((80, 60), 'resize')
    out = t(image=np.zeros((45, 61, 3), np.uint8), mask=np.zeros((45, 61), np.uint8))
    assert out['image'].shape == (59, 80, 3) and out['mask'].shape == (45, 61)  # mask: original size (mmseg)
    np.testing.assert_allclose(out['image'][0, 0], -np.array([123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375],
                               rtol=1e-5)
    assert build_eval_transform((80, 60), 'full')(image=np.zeros((45, 61, 3), np.uint8))['image'].shape == (45, 61, 3)
    with pytest.raises(ValueError, match='val_mode'):
        build_eval_transform((80, 60), 'crop')


def test_padding_uses_fill_mask_255_not_zero():
    image, mask = _scene(20, 20)
    t = build_train_transform(crop_size=(64, 64), base_size=None, scale_range=(1.0, 1.0), seed=0)
    out = t(image=image, mask=mask)
    assert (out['mask'][20:] == 255).all() and (out['mask'][:, 20:] == 255).all()
    assert (out['image'][20:] == 0).all()


def test_seeded_pipelines_repeat_and_reseed_changes_draws():
    image, mask = _scene()
    a = build_train_transform(crop_size=(30, 30), base_size=(80, 60), seed=5)
    b = build_train_transform(crop_size=(30, 30), base_size=(80, 60), seed=5)
    np.testing.assert_array_equal(a(image=image, mask=mask)['image'], b(image=image, mask=mask)['image'])
    reseed(b, 6)
    assert not np.array_equal(a(image=image, mask=mask)['image'], b(image=image, mask=mask)['image'])


# ------------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize('n', [1, 7, 10, 11])
@pytest.mark.parametrize('world', [2, 3])
def test_unpadded_sampler_each_index_once(n, world):
    data = list(range(n))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == data  # exactly once across ranks
    assert [len(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)] == \
        [len(s) for s in shards]
    # a dataset-level statistic (like a confusion matrix sum) equals the single-process one
    values = torch.arange(n, dtype=torch.float64) ** 2
    assert sum(values[s].sum() for s in shards) == values.sum()
    padded = [i for r in range(world) for i in DistributedSampler(data, num_replicas=world, rank=r, shuffle=False)]
    assert (len(padded) != n) == (n % world != 0)  # torch's sampler pads, which is what we avoid
    assert isinstance(UnpaddedDistributedSampler(data, 2, 0), DistributedSampler)  # Lightning keeps it


def test_unpadded_sampler_bad_rank():
    with pytest.raises(ValueError, match='rank 3'):
        UnpaddedDistributedSampler(list(range(5)), num_replicas=2, rank=3)
