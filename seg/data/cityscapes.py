"""CityscapesDataset: the 19-class Cityscapes benchmark, read straight from the official download.

Layout (https://www.cityscapes-dataset.com, ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    {root}/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
    {root}/gtFine/{split}/{city}/{name}_gtFine_labelIds.png       (or *_labelTrainIds.png, see below)

The 34 label ids are mapped to the 19 train ids on the fly (everything else -> 255), so no
``createTrainIdLabelImgs.py`` step is needed. With `label_train_ids=True` the ``*_gtFine_labelTrainIds.png``
files written by that script are read instead (values must be 0-18 or 255).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .base import IGNORE_INDEX, DataError, SegDataset, index_lut, map_index_mask

CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
# label id -> train id for the 19 evaluated classes (cityscapesScripts helpers/labels.py)
LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def label_id_lut() -> np.ndarray:
    """0..33 (and -1 stored as 255) -> train id or 255; larger values are invalid (-1)."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[:34] = IGNORE_INDEX
    lut[255] = IGNORE_INDEX  # license plate (-1) as stored by some tools
    for label, train in LABEL_TO_TRAIN.items():
        lut[label] = train
    return lut


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations with 19 train ids.

    Args:
        root: folder holding ``leftImg8bit`` and ``gtFine``.
        split: 'train', 'val' or 'test' (test labels are all ignore in the public release).
        label_train_ids: read ``*_gtFine_labelTrainIds.png`` instead of mapping ``*_gtFine_labelIds.png``.
        transform, strict: see `SegDataset`.
        label_map: ``{value as stored: train id or 255}`` overriding the mapping above (`SegDataset.set_label_map`).
    """

    CLASSES = CLASSES
    PALETTE = PALETTE

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        label_train_ids: bool = False,
        transform: Callable[..., dict[str, Any]] | None = None,
        strict: bool = True,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(transform, strict)
        self.root, self.split = Path(root), split
        self.classes, self.palette = list(CLASSES), list(PALETTE)
        self.label_train_ids = label_train_ids
        suffix = "_gtFine_labelTrainIds.png" if label_train_ids else "_gtFine_labelIds.png"
        self._lut = index_lut(len(CLASSES)) if label_train_ids else label_id_lut()
        self._valid = "train ids 0..18 or 255" if label_train_ids else "Cityscapes label ids 0..33"
        image_dir, label_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise DataError(
                    f"{d}: missing folder; expected {{root}}/leftImg8bit/{split} and {{root}}/gtFine/{split}"
                )
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))

        def mask_for(img: Path) -> Path:
            name = img.name[: -len("_leftImg8bit.png")]
            return label_dir / img.parent.name / f"{name}{suffix}"

        self._pair(images, mask_for, f"{self.root} ({split})")
        self.set_label_map(label_map)

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return map_index_mask(raw, self._lut, path, self._valid)
