"""Deterministic synthetic demo data with a long-range cue: `ensure_demo_data(root='data/demo')`.

Scenes (96x96 RGB, index-PNG masks; trained whole, see configs/quickstart.yaml) hold a few rectangular fields of
grass or concrete on sand and one elliptical body of water near the centre. The water is a *lake* when the
ground far from it is red earth and a *pool* when it is violet-grey: the two classes have exactly the same
colour, texture and shape distribution, and the water is surrounded by a disc of plain sand (radius 40 px,
identical in both cases), so the cue that decides the class lies at least ``MIN_CUE_DISTANCE`` (18) px from
every water pixel and 36-44 px from the water's centre. A model labels the middle of the water correctly only
by using information from that far away; sand, grass and concrete are easy local textures. The cue is within
a ResNet-18-D8's theoretical receptive field (its dilated last stage alone spans +-128 px), so whether a plain
FCN uses it is an empirical question that ``seg.compare`` measures. Measured at the quickstart budget (400
iterations, 3 seeds; README "The quickstart comparison, as measured"): no context head is distinguishable from
the FCN (lake and pool IoU 19-39 for every head), so the cue is not learned at that budget; an earlier run that
favoured Non-local did not replicate.

Classes: 0 sand, 1 grass, 2 concrete, 3 lake, 4 pool (no ignore pixels). Written once, atomically (a temp
folder renamed into place), so concurrent first uses are safe; `classes.json` carries names and palette.
Demo data is only ever written at its own root (`prepare_demo_root`), never at a mistyped ``data.root``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .base import DataError

DEMO_VERSION = 2
DEMO_ROOT = "data/demo"
CLASSES = ["sand", "grass", "concrete", "lake", "pool"]
PALETTE = [(194, 178, 128), (60, 160, 60), (140, 140, 150), (40, 90, 220), (0, 200, 220)]
SPLITS = {"train": 300, "val": 60}
SIZE = 96
# geometry at SIZE (scaled for other sizes): plain-sand disc radius, water centre jitter, water semi-axes
BUFFER_RADIUS = 40
CENTRE_JITTER = 4
WATER_AXES = (10, 18)
MIN_CUE_DISTANCE = BUFFER_RADIUS - CENTRE_JITTER - WATER_AXES[1]  # 18 px at SIZE
# far-ground tint (RGB gain) that decides the water's class
TINTS = {3: (1.25, 0.75, 0.75), 4: (0.8, 0.8, 1.3)}  # lake: red earth, pool: violet-grey

# texture: mean RGB, per-pixel noise std, stripe amplitude and period (0 = none)
_TEXTURES = {
    "sand": ((196, 176, 126), 14.0, 0.0, 0),
    "grass": ((62, 150, 58), 16.0, 14.0, 4),
    "concrete": ((138, 138, 146), 10.0, 18.0, 8),
    "water": ((40, 92, 200), 12.0, 10.0, 6),
}


def _texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    mean, noise, amp, period = _TEXTURES[name]
    img = np.asarray(mean, np.float32) + rng.normal(0.0, noise, (h, w, 3)).astype(np.float32)
    if period:
        yy, xx = np.mgrid[0:h, 0:w]
        direction = {"grass": xx, "concrete": xx + yy, "water": yy}[name]
        img += (amp * np.sin(2 * np.pi * direction / period + rng.uniform(0, 2 * np.pi)))[..., None]
    return img


def make_scene(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8 RGB, mask HxW uint8) scene; geometry scales with ``size``."""
    s = size / SIZE
    image = _texture(rng, "sand", size, size)
    mask = np.zeros((size, size), np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    n_fields = int(rng.integers(1, 4))
    gap = max(1, round(3 * s))
    for _ in range(40):  # rejection-sample non-overlapping fields, anywhere
        if len(placed) == n_fields:
            break
        fh, fw = (int(v) for v in rng.integers(max(2, size // 6), max(3, size // 3), 2))
        y, x = int(rng.integers(0, size - fh + 1)), int(rng.integers(0, size - fw + 1))
        if any(
            y < b + bh + gap and b < y + fh + gap and x < a + bw + gap and a < x + fw + gap for a, b, bw, bh in placed
        ):
            continue
        placed.append((x, y, fw, fh))
    for x, y, fw, fh in placed:
        field = "grass" if rng.random() < 0.5 else "concrete"
        image[y : y + fh, x : x + fw] = _texture(rng, field, fh, fw)
        mask[y : y + fh, x : x + fw] = 1 if field == "grass" else 2
    cls_water = 3 if rng.random() < 0.5 else 4
    # the cue: sand beyond the plain disc is tinted (fields keep their colours)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    far = ((yy - c) ** 2 + (xx - c) ** 2 > (BUFFER_RADIUS * s) ** 2) & (mask == 0)
    image[far] *= np.asarray(TINTS[cls_water], np.float32)
    # the water: an ellipse near the centre, over whatever lies there
    cx, cy = (c + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * s for _ in range(2))
    ax, ay = (max(1, int(v * s)) for v in rng.uniform(*WATER_AXES, 2))
    water = np.zeros((size, size), np.uint8)
    cv2.ellipse(water, (round(cx), round(cy)), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    sel = water.astype(bool)
    image[sel] = _texture(rng, "water", size, size)[sel]
    mask[sel] = cls_water
    image *= rng.uniform(0.85, 1.15)  # global brightness jitter
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo(root: str | Path, splits: dict[str, int] = SPLITS, size: int = SIZE, seed: int = 0) -> None:
    """Write the dataset into `root` (which must not exist) without any atomicity (see `ensure_demo_data`)."""
    root = Path(root)
    for s_idx, (split, n) in enumerate(splits.items()):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, s_idx, i])
            image, mask = make_scene(rng, size)
            stem = f"{split}_{i:04d}"
            cv2.imwrite(str(root / split / "images" / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / split / "masks" / f"{stem}.png"), mask)
    meta = {
        "classes": CLASSES,
        "palette": [list(c) for c in PALETTE],
        "demo_version": DEMO_VERSION,
        "description": "seg synthetic demo: lake and pool are the same water; only the tint of the ground "
        f"at least {MIN_CUE_DISTANCE * size // SIZE} px away tells them apart",
    }
    (root / "classes.json").write_text(json.dumps(meta, indent=1))


def _is_current(root: Path) -> bool:
    try:
        return json.loads((root / "classes.json").read_text()).get("demo_version") == DEMO_VERSION
    except (OSError, ValueError):
        return False


def ensure_demo_data(root: str | Path = DEMO_ROOT) -> Path:
    """Return `root`, writing the demo FolderDataset there first if it is not already present.

    Safe under concurrency: the data is written to a temporary sibling folder and renamed into place, so a
    reader never sees a half-written dataset; if another process wins the race its copy is used.
    """
    root = Path(root)
    if _is_current(root):
        return root
    if root.exists() and any(root.iterdir()):
        if not (root / "classes.json").is_file() or "demo_version" not in (root / "classes.json").read_text():
            raise DataError(f"{root}: exists and is not seg demo data; choose another root or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_demo(tmp / "d")
        if root.exists() and not _is_current(root):  # an old demo version (or empty folder): move it aside
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            try:
                os.replace(root, old / "d")
            except OSError:
                pass  # someone else moved it first
        try:
            os.rename(tmp / "d", root)
        except OSError:
            if not _is_current(root):  # lost the race to an incompatible writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for old in root.parent.glob(f".{root.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return root


def prepare_demo_root(root: str | Path, generate_demo: bool | str | None) -> None:
    """The ``data.generate_demo`` rule: demo data is written only at the demo's own root.

    generate_demo: False/None: nothing; True: the demo root is ``data/demo``; a path: that is the demo root.
    When ``root`` is the demo root the data is written there if absent (`ensure_demo_data`); any other existing
    root is left alone (a real dataset); a missing other root is a DataError naming it, so a typo in
    ``--data.root`` fails instead of silently training on freshly written demo data.
    """
    if generate_demo is None or generate_demo is False:
        return
    demo_root = Path(DEMO_ROOT if generate_demo is True else str(generate_demo))
    root = Path(root)
    if root.resolve() == demo_root.resolve():
        ensure_demo_data(root)
    elif not root.exists():
        raise DataError(
            f"data.root {root} does not exist. Demo data is only generated at its own root "
            f"({demo_root}); fix data.root, or pass --data.generate_demo={root} to write the demo "
            "data there on purpose"
        )


if __name__ == "__main__":
    import sys

    print(ensure_demo_data(sys.argv[1] if len(sys.argv) > 1 else DEMO_ROOT))
