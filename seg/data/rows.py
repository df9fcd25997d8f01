"""Row sources, and the protocol of the transforms that can read them: how a training sample is decoded only as
far down as its crop reaches.

A *row source* is an image decoded from the top, only as far as asked (`seg.data.png.PngRows`; a mask through
`MappedRows`, which maps and checks its rows as they are read). A transform that can crop from such sources is a
`RowReader`: `SegDataset` asks ``isinstance(transform, RowReader)``, hands it the sources, and decodes the whole
files itself when the answer is None (or when a source turns out to be damaged). What the transform reads, in
which order, and how its random draws stay those of a whole decode is the transform's business
(`seg.data.transforms.recipe.TrainPipeline`); the dataset knows only the files and their labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


class RowSource(Protocol):
    """An image readable from the top: ``shape`` is the whole image's ((H, W) or (H, W, C)), ``rows(n)`` its first
    n rows (at least those; clipped to the image), decoding only as far as needed."""

    shape: tuple[int, ...]

    def rows(self, count: int) -> np.ndarray: ...


@runtime_checkable
class RowReader(Protocol):
    """A transform that can read a sample from row sources (the training recipe's pipeline).

    ``call_reading_rows(image, mask)`` returns what ``transform(image=..., mask=...)`` returns for the whole
    decoded arrays (the same random draws, the same result), reading only the rows it needs; `mask` is a row
    source or a whole array. None means "not this time" (e.g. the pipeline no longer starts with a crop that can
    read rows): the caller decodes the files and calls the transform as usual. An exception from a source (a
    damaged file) propagates with the transform's random state restored to what it was before the call, so the
    caller can decode the whole files and repeat the same draws.
    """

    def call_reading_rows(self, image: RowSource, mask: RowSource | np.ndarray) -> dict[str, Any] | None: ...


class MappedRows:
    """A mask row source whose rows go through a dataset's `decode_mask` (train ids, values checked) as they are
    read.

    Args:
        source: the raw mask, readable from the top (`seg.data.png.PngRows`).
        decode: the dataset's ``decode_mask(raw_rows, path)``.
        path: the mask file, for the errors `decode` raises.
    """

    def __init__(self, source: RowSource, decode: Callable[[np.ndarray, Path], np.ndarray], path: Path) -> None:
        self.source, self.decode, self.path = source, decode, path
        self.shape = source.shape[:2]
        self._mapped = np.empty((0, self.shape[1]), np.uint8)

    def rows(self, count: int) -> np.ndarray:
        if count > len(self._mapped):
            self._mapped = self.decode(self.source.rows(count), self.path)
        return self._mapped[:count]
