"""Deterministic synthetic demo data where context matters: `ensure_demo_data(root='data/demo')`.

Scenes (128x128 RGB, index-PNG masks) on a sand background hold a few non-overlapping rectangular fields of
grass or concrete; each field holds an elliptical body of water. Water inside grass is a *lake*, water inside
concrete is a *pool*: the two classes have exactly the same colour/texture distribution and the same shape
distribution, so a pixel in the middle of the water can only be labelled by looking at what surrounds it
(the field, 8-30 px away from the shore). Local-texture models confuse lake and pool; context heads
(DANet, CCNet, non-local, axial) can tell them apart. Everything else (sand, grass, concrete) is easy, with
large regions and clean boundaries, so a small model reaches a useful mIoU in minutes on CPU.

Classes: 0 sand, 1 grass, 2 concrete, 3 lake, 4 pool (no ignore pixels). Written once, atomically (a temp
folder renamed into place), so concurrent first uses are safe; `classes.json` carries names and palette.
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

DEMO_VERSION = 1
CLASSES = ['sand', 'grass', 'concrete', 'lake', 'pool']
PALETTE = [(194, 178, 128), (60, 160, 60), (140, 140, 150), (40, 90, 220), (0, 200, 220)]
SPLITS = {'train': 300, 'val': 60}
SIZE = 128

# texture: mean RGB, per-pixel noise std, stripe amplitude and period (0 = none)
_TEXTURES = {
    'sand': ((196, 176, 126), 14.0, 0.0, 0),
    'grass': ((62, 150, 58), 16.0, 14.0, 4),
    'concrete': ((138, 138, 146), 10.0, 18.0, 8),
    'water': ((40, 92, 200), 12.0, 10.0, 6),
}


def _texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    mean, noise, amp, period = _TEXTURES[name]
    img = np.asarray(mean, np.float32) + rng.normal(0.0, noise, (h, w, 3)).astype(np.float32)
    if period:
        yy, xx = np.mgrid[0:h, 0:w]
        direction = {'grass': xx, 'concrete': xx + yy, 'water': yy}[name]
        img += (amp * np.sin(2 * np.pi * direction / period + rng.uniform(0, 2 * np.pi)))[..., None]
    return img


def make_scene(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8 RGB, mask HxW uint8) scene."""
    image = _texture(rng, 'sand', size, size)
    mask = np.zeros((size, size), np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    n_fields = int(rng.integers(1, 4))
    for _ in range(40):  # rejection-sample non-overlapping fields
        if len(placed) == n_fields:
            break
        fh, fw = (int(v) for v in rng.integers(size * 3 // 8, size * 3 // 4, 2))
        y, x = int(rng.integers(0, size - fh + 1)), int(rng.integers(0, size - fw + 1))
        if any(y < b + bh + 4 and b < y + fh + 4 and x < a + bw + 4 and a < x + fw + 4 for a, b, bw, bh in placed):
            continue
        placed.append((x, y, fw, fh))
    for x, y, fw, fh in placed:
        field = 'grass' if rng.random() < 0.5 else 'concrete'
        cls_field, cls_water = (1, 3) if field == 'grass' else (2, 4)
        image[y:y + fh, x:x + fw] = _texture(rng, field, fh, fw)
        mask[y:y + fh, x:x + fw] = cls_field
        # water ellipse: semi-axes 25-38 % of the field, centred with a small jitter
        ax, ay = int(fw * rng.uniform(0.25, 0.38)), int(fh * rng.uniform(0.25, 0.38))
        cx = x + fw // 2 + int(rng.integers(-fw // 10, fw // 10 + 1))
        cy = y + fh // 2 + int(rng.integers(-fh // 10, fh // 10 + 1))
        water = np.zeros((size, size), np.uint8)
        cv2.ellipse(water, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        water &= mask == cls_field  # stays inside its field
        sel = water.astype(bool)
        image[sel] = _texture(rng, 'water', size, size)[sel]
        mask[sel] = cls_water
    image *= rng.uniform(0.85, 1.15)  # global brightness jitter
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo(root: str | Path, splits: dict[str, int] = SPLITS, size: int = SIZE, seed: int = 0) -> None:
    """Write the dataset into `root` (which must not exist) without any atomicity (see `ensure_demo_data`)."""
    root = Path(root)
    for s_idx, (split, n) in enumerate(splits.items()):
        (root / split / 'images').mkdir(parents=True)
        (root / split / 'masks').mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, s_idx, i])
            image, mask = make_scene(rng, size)
            stem = f'{split}_{i:04d}'
            cv2.imwrite(str(root / split / 'images' / f'{stem}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / split / 'masks' / f'{stem}.png'), mask)
    meta = {
        'classes': CLASSES,
        'palette': [list(c) for c in PALETTE],
        'demo_version': DEMO_VERSION,
        'description': 'seg synthetic demo: lake (water in grass) and pool (water in concrete) differ only by context',
    }
    (root / 'classes.json').write_text(json.dumps(meta, indent=1))


def _is_current(root: Path) -> bool:
    try:
        return json.loads((root / 'classes.json').read_text()).get('demo_version') == DEMO_VERSION
    except (OSError, ValueError):
        return False


def ensure_demo_data(root: str | Path = 'data/demo') -> Path:
    """Return `root`, writing the demo FolderDataset there first if it is not already present.

    Safe under concurrency: the data is written to a temporary sibling folder and renamed into place, so a
    reader never sees a half-written dataset; if another process wins the race its copy is used.
    """
    root = Path(root)
    if _is_current(root):
        return root
    if root.exists() and any(root.iterdir()):
        if not (root / 'classes.json').is_file() or 'demo_version' not in (root / 'classes.json').read_text():
            raise DataError(f'{root}: exists and is not seg demo data; choose another root or remove it')
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        write_demo(tmp / 'd')
        if root.exists() and not _is_current(root):  # an old demo version (or empty folder): move it aside
            old = Path(tempfile.mkdtemp(prefix=f'.{root.name}.old-', dir=root.parent))
            try:
                os.replace(root, old / 'd')
            except OSError:
                pass  # someone else moved it first
        try:
            os.rename(tmp / 'd', root)
        except OSError:
            if not _is_current(root):  # lost the race to an incompatible writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for old in root.parent.glob(f'.{root.name}.old-*'):
            shutil.rmtree(old, ignore_errors=True)
    return root


if __name__ == '__main__':
    import sys

    print(ensure_demo_data(sys.argv[1] if len(sys.argv) > 1 else 'data/demo'))
