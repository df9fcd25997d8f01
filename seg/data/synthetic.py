"""Deterministic synthetic demo data that needs the whole scene: `ensure_demo_data(root='data/demo')`.

Scenes (64x64 RGB, index-PNG masks; trained whole, see configs/quickstart.yaml) hold three rectangular fields
of grass or concrete in three of the four corners of a sand plain, and one elliptical body of water near the
centre. The water is a *lake* in the countryside, where most fields (two of the three) are grass, and a *pool*
in town, where most are concrete. The two classes have exactly the same colour, texture and shape
distribution, and the water's neighbourhood does not tell them apart: the field nearest to the water is of the
minority kind in a third of the scenes, and the class is decided only by counting the fields across the scene.
A head that pools the whole scene (PSP's global bin, attention over all positions) can read that count from
features the network learns anyway for the grass and concrete classes; a plain FCN has to learn to carry it
from the corners through its stacked convolutions. Measured at the quickstart budget (README "Compare heads",
two comparisons of 3 seeds each): PSP separates lake from pool and is better than the FCN; docs/benchmarks.md
has every head.

Classes: 0 sand, 1 grass, 2 concrete, 3 lake, 4 pool (no ignore pixels). Written once, atomically (a temp
folder renamed into place), so concurrent first uses are safe; `classes.json` carries names and palette.
Demo data is only ever written at its own root (`prepare_demo_root`), never at a mistyped ``data.root``.
Version 2 (96x96, the class decided by the tint of the ground 18-44 px from the water) was learned by no head
at 400 iterations of a ResNet-18-D8, and by the FCN as well as by PSP at 64x64 (data/README.md).
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

DEMO_VERSION = 3
DEMO_ROOT = "data/demo"
CLASSES = ["sand", "grass", "concrete", "lake", "pool"]
PALETTE = [(194, 178, 128), (60, 160, 60), (140, 140, 150), (40, 90, 220), (0, 200, 220)]
SPLITS = {"train": 300, "val": 60}
SIZE = 64
# geometry at REF (scaled for other sizes): fields' side range, their margin to the image border, water centre
# jitter and semi-axes
REF = 96
FIELD_SIDE = (22, 30)
FIELD_MARGIN = 6
CENTRE_JITTER = 4
WATER_AXES = (10, 18)
# the kinds of the three fields by water class: two of the majority kind, one of the other
MAJORITY = {3: "grass", 4: "concrete"}

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
    s = size / REF
    image = _texture(rng, "sand", size, size)
    mask = np.zeros((size, size), np.uint8)
    cls_water = 3 if rng.random() < 0.5 else 4
    minority = "concrete" if cls_water == 3 else "grass"
    kinds = rng.permutation([MAJORITY[cls_water]] * 2 + [minority])
    margin = max(0, round(FIELD_MARGIN * s))
    for kind, corner in zip(kinds, rng.permutation(4)[:3]):  # three of the four corners
        fh, fw = (int(v) for v in rng.integers(max(2, round(FIELD_SIDE[0] * s)), max(3, round(FIELD_SIDE[1] * s)), 2))
        dy, dx = (int(v) for v in rng.integers(0, margin + 1, 2))
        y = dy if corner < 2 else size - fh - dy
        x = dx if corner % 2 == 0 else size - fw - dx
        image[y : y + fh, x : x + fw] = _texture(rng, str(kind), fh, fw)
        mask[y : y + fh, x : x + fw] = 1 if kind == "grass" else 2
    # the water: an ellipse near the centre, over whatever lies there
    c = (size - 1) / 2
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
        "description": "seg synthetic demo: lake and pool are the same water; a lake lies among mostly grass "
        "fields, a pool among mostly concrete ones (two of the three fields in the corners)",
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
