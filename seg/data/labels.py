"""Label set-up checks: the mistakes that train without an error and report a perfect, or an empty, mIoU.

* **A class hidden as ignore.** Annotation tools export binary masks as 0/255. With ``classes: [background,
  lesion]`` the 255 pixels are read as ignore: 'lesion' has no pixels, the network learns to paint background and
  validation reports mIoU 1 (background's IoU; lesion's is NaN and left out of the mean). The cure is a label map
  (``data.label_map: {255: 1}``; mmseg's ``label_map`` / ``reduce_zero_label``, Hugging Face's
  ``do_reduce_labels``).
* **No labelled pixel at all.** Training runs at loss 0 and learns nothing; validation logs NaN.

The evidence for the first: a declared class has no pixel in the masks read while ignore covers part of them,
and either the labelled pixels hold one class only (0/255 masks: background, and the class hidden as 255), or the
ignore pixels form regions (`REGION_KERNEL`) amounting to `MIN_REGION_SHARE` of the pixels. Ordinary ignore is
not evidence: thin outlines (VOC's 5-px borders, 1-3 px object edges) have no pixel inside a region, and void
regions (Cityscapes' ego vehicle, ADE20K's "other") count only while some class is absent from every mask read,
which a full split with all its classes never is.

`LabelStats` gathers this from decoded masks (train ids), `label_problems` turns it into messages naming the split,
a file and the fix; ``python -m seg.data.check`` applies them to the masks it checks, `check_training_masks` to a
bounded sample of the training split before train.py's first step.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .base import IGNORE_INDEX, DataError, SegDataset

# an ignore pixel lies inside a region when its 7x7 neighbourhood is all ignore: outlines up to 6 px wide have none
REGION_KERNEL = 7
MIN_REGION_SHARE = 1e-3  # ignore regions covering this share of the pixels read are labels, not borders
TRAIN_SAMPLE = 32  # training masks read before the first step (spread over the split) ...
TRAIN_SAMPLE_MAX = 512  # ... and how far that goes when they raise a doubt (a class absent, or no label at all)


class LabelStats:
    """Pixel counts per train id over the masks added, and how much of the ignore lies inside ignore regions.

    Attributes:
        pixels: (256,) int64 pixel counts per train id (255 = ignore).
        region: ignore pixels inside ignore regions (7x7 neighbourhood all ignore).
        masks: masks added.
        example: the mask with the most ignore pixels (the file the messages name), or None.
    """

    def __init__(self) -> None:
        self.pixels = np.zeros(256, np.int64)
        self.region = 0
        self.masks = 0
        self.example: Path | None = None
        self._example_ignore = 0

    def add(self, mask: np.ndarray, path: str | Path) -> None:
        """Count one HxW uint8 train-id mask (255 ignore), read from `path`."""
        counts = np.bincount(mask.ravel(), minlength=256)[:256]
        self.pixels += counts
        self.masks += 1
        ignore = int(counts[IGNORE_INDEX])
        if ignore:
            inside = cv2.erode((mask == IGNORE_INDEX).view(np.uint8), np.ones((REGION_KERNEL, REGION_KERNEL), np.uint8))
            self.region += int(cv2.countNonZero(inside))  # the image border does not erode (outside counts as ignore)
        if ignore > self._example_ignore:
            self.example, self._example_ignore = Path(path), ignore


def split_name(dataset: SegDataset) -> str:
    """How messages name a dataset's split: ``{root}/{split}`` for folders, ``{root} ({split})`` otherwise."""
    root, split = getattr(dataset, "root", "?"), getattr(dataset, "split", "?")
    return f"{root}/{split}" if type(dataset).__name__ == "FolderDataset" else f"{root} ({split})"


def no_label_problem(stats: LabelStats, dataset: SegDataset) -> str | None:
    """The message when the masks read hold no labelled pixel (every pixel ignore), else None."""
    if not stats.masks or stats.pixels[: dataset.num_classes].any():
        return None
    first = dataset.samples[0][1] if dataset.samples else "?"
    return (
        f"{split_name(dataset)}: no labelled pixel in the {stats.masks} mask(s) read (e.g. {first}): every pixel is "
        "ignore (255), so training would run at loss 0 and validation score nothing. Check what the masks hold "
        "(python -m seg.data.check) and how they are read: data.ignore_index, data.label_map, "
        "data.reduce_zero_label, or the split's name."
    )


def hidden_class_problem(stats: LabelStats, dataset: SegDataset) -> str | None:
    """The message when a declared class looks hidden as ignore (see the module docstring), else None."""
    c = dataset.num_classes
    absent = [k for k in range(c) if stats.pixels[k] == 0]
    total, ignore = int(stats.pixels.sum()), int(stats.pixels[IGNORE_INDEX])
    if not absent or not ignore or len(absent) == c:
        return None
    one_class = len(absent) == c - 1
    regions = stats.region >= MIN_REGION_SHARE * total
    if not (one_class or regions):
        return None
    k, name = absent[0], dataset.classes[absent[0]]
    names = ", ".join(f"{dataset.classes[a]!r} ({a})" for a in absent)
    shape = "in regions, not thin outlines" if regions else "beside a single labelled class"
    head = (
        f"{split_name(dataset)}: class{'es' if len(absent) > 1 else ''} {names} ha{'ve' if len(absent) > 1 else 's'} "
        f"no pixel in the {stats.masks} mask(s) read, while ignore covers {ignore / total:.2%} of their pixels "
        f"({shape}; most in {stats.example}). "
    )
    if getattr(dataset, "color_masks", False):
        fix = (
            f"If an ignored colour (ignore_colors) is {name!r}, move it into the palette at index {k}. "
            if getattr(dataset, "ignore_colors", None)
            else ""
        )
    else:
        values = dataset.ignore_values()
        v = getattr(dataset, "file_ignore_index", IGNORE_INDEX)
        v = v if v in values else (values[-1] if values else IGNORE_INDEX)
        fix = (
            f"Masks exported as 0/{v} mean {v} = {name!r}, which seg reads as ignore: never trained, never scored "
            f"(val/mIoU would be that of the other classes alone, e.g. 1.0). Map it: data.label_map: {{{v}: {k}}} "
            f"(train.py --data.label_map='{{{v}: {k}}}'; python -m seg.data.check ... --label_map {v}:{k}). "
        )
    return (
        head + fix + "If the split really has no such pixels, pass --data.allow_missing_classes=true "
        "(python -m seg.data.check: --allow_missing_classes)."
    )


def label_problems(stats: LabelStats, dataset: SegDataset, allow_missing_classes: bool = False) -> list[str]:
    """Both checks' messages for the masks counted in `stats` (an empty list when the labels look right)."""
    empty = no_label_problem(stats, dataset)
    if empty is not None:
        return [empty]
    hidden = None if allow_missing_classes else hidden_class_problem(stats, dataset)
    return [hidden] if hidden is not None else []


def check_training_masks(dataset: SegDataset, allow_missing_classes: bool = False) -> LabelStats:
    """Read a bounded sample of `dataset`'s masks (no images) and raise `DataError` when its labels are unusable.

    `TRAIN_SAMPLE` masks spread over the split first (a few ms each); only when they show a problem, up to
    `TRAIN_SAMPLE_MAX`, and, while no labelled pixel has been seen, the whole split: a rare class (or a run of
    unlabelled frames) is found before a run is refused for missing it.
    """
    n = len(dataset)
    stats, seen = LabelStats(), set()

    def read(count: int) -> None:
        for i in np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)):
            if int(i) not in seen:
                seen.add(int(i))
                stats.add(dataset.load_mask(int(i)), dataset.samples[int(i)][1])

    read(TRAIN_SAMPLE)
    if label_problems(stats, dataset, allow_missing_classes):
        read(TRAIN_SAMPLE_MAX)
    if no_label_problem(stats, dataset) is not None:
        read(n)
    problems = label_problems(stats, dataset, allow_missing_classes)
    if problems:
        raise DataError(problems[0])
    return stats
