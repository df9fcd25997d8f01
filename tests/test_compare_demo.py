"""The demo data built for head comparisons: the lake/pool cue lies far from the water, lake and pool water look
alike, and demo data is only written at its own root (a typo'd data.root is an error, not a new dataset)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg.data import SegDataModule
from seg.data.base import DataError
from seg.data.synthetic import BUFFER_RADIUS, MIN_CUE_DISTANCE, SIZE, TINTS, make_scene, prepare_demo_root


def test_water_class_decided_only_by_far_ground():
    lake_px, pool_px = [], []
    far_ratio: dict[int, list] = {3: [], 4: []}
    near_ratio: dict[int, list] = {3: [], 4: []}
    for i in range(40):
        image, mask = make_scene(np.random.default_rng([7, i]))
        water = (mask == 3) | (mask == 4)
        assert water.any() and len(np.unique(mask[water])) == 1
        cls = int(mask[water][0])
        (lake_px if cls == 3 else pool_px).append(image[water].reshape(-1, 3).astype(np.float64))
        # the cue: sand outside the plain disc (radius BUFFER_RADIUS around the centre) is tinted by class;
        # inside the disc, sand looks the same for both classes
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        outside = (yy - (SIZE - 1) / 2) ** 2 + (xx - (SIZE - 1) / 2) ** 2 > BUFFER_RADIUS**2
        r_over_b = image[..., 0].astype(np.float64) / image[..., 2]
        far_ratio[cls].append(r_over_b[outside & (mask == 0)].mean())
        near_ratio[cls].append(r_over_b[~outside & (mask == 0)].mean())
        dist = cv2.distanceTransform((~water).astype(np.uint8), cv2.DIST_L2, 5)  # px to the nearest water pixel
        assert dist[outside].min() >= MIN_CUE_DISTANCE - 1  # the cue is at least 18 px from every water pixel
        assert (outside & (mask == 0)).sum() > 0.2 * mask.size  # and large
    assert min(far_ratio[3]) > 2.2 > 1.2 > max(far_ratio[4])  # red earth vs violet-grey, never confusable
    assert abs(np.mean(near_ratio[3]) - np.mean(near_ratio[4])) < 0.05
    lake, pool = np.concatenate(lake_px), np.concatenate(pool_px)
    # the same water: colour statistics agree up to the per-scene brightness jitter
    assert np.abs(lake.mean(0) - pool.mean(0)).max() < 10 and np.abs(lake.std(0) - pool.std(0)).max() < 6
    assert SIZE == 96 and set(TINTS) == {3, 4}


def test_demo_only_written_at_its_own_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data.root data/citysapes does not exist"):
        SegDataModule("folder", "data/citysapes", generate_demo=True, num_workers=0)  # the quickstart + a typo
    assert not (tmp_path / "data" / "citysapes").exists()
    dm = SegDataModule("folder", "data/demo", generate_demo=True, num_workers=0)  # the demo root: written
    assert dm.num_classes == 5 and (tmp_path / "data" / "demo" / "train" / "images").is_dir()
    (tmp_path / "mine").mkdir()
    prepare_demo_root(tmp_path / "mine", True)  # an existing other root: left alone (a real dataset)
    assert not any((tmp_path / "mine").iterdir())
