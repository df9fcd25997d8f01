"""The demo data built for head comparisons: the lake/pool class is decided by counting the fields across the
scene (no window around the water decides it), lake and pool water look alike, and demo data is only written at
its own root (a typo'd data.root is an error, not a new dataset)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg.data import SegDataModule
from seg.data.base import DataError
from seg.data.synthetic import MAJORITY, SIZE, make_scene, prepare_demo_root


def _fields(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, component mask) of every grass / concrete field, found from the mask alone."""
    out = []
    for cls in (1, 2):
        n, comp = cv2.connectedComponents((mask == cls).astype(np.uint8), connectivity=4)
        out += [(cls, comp == i) for i in range(1, n)]
    return out


def test_water_class_decided_by_the_majority_of_the_fields_not_the_nearest():
    lake_px, pool_px = [], []
    nearest_is_minority, n = 0, 200
    for i in range(n):
        image, mask = make_scene(np.random.default_rng([7, i]))
        assert image.shape == (SIZE, SIZE, 3) and SIZE == 64
        water = (mask == 3) | (mask == 4)
        assert water.any() and len(np.unique(mask[water])) == 1
        cls = int(mask[water][0])
        (lake_px if cls == 3 else pool_px).append(image[water].reshape(-1, 3).astype(np.float64))
        # three fields (the water may cover a corner of one), two of the class's majority kind
        fields = _fields(mask)
        kinds = [k for k, _ in fields]
        assert len(fields) == 3, (i, kinds)
        majority = {"grass": 1, "concrete": 2}[MAJORITY[cls]]
        assert kinds.count(majority) == 2
        # each field in its own corner quadrant, away from the water's centre
        for _, comp in fields:
            ys, xs = np.nonzero(comp)
            assert (ys.max() < SIZE / 2 or ys.min() >= SIZE / 2) and (xs.max() < SIZE / 2 or xs.min() >= SIZE / 2)
        # the field nearest to the water: its kind alone does not give the class
        dist = cv2.distanceTransform((~water).astype(np.uint8), cv2.DIST_L2, 5)  # px to the nearest water pixel
        nearest = min(fields, key=lambda f: dist[f[1]].min())
        nearest_is_minority += nearest[0] != majority
    # a rule "the nearest field decides" is wrong in about a third of the scenes (binomial, n=200: 1/3 +- 0.1)
    assert 0.23 < nearest_is_minority / n < 0.43
    lake, pool = np.concatenate(lake_px), np.concatenate(pool_px)
    # the same water: colour statistics agree up to the per-scene brightness jitter
    assert np.abs(lake.mean(0) - pool.mean(0)).max() < 10 and np.abs(lake.std(0) - pool.std(0)).max() < 6


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
