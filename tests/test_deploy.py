"""seg.deploy's pure-Python pieces: the keep-ratio test-scale size in (H, W), and the metadata of exported files
(today's ``test_scale`` (H, W); files exported before carry ``eval_resize`` (W, H))."""

from __future__ import annotations

import json

import pytest

from seg.deploy import metadata
from seg.deploy.geometry import rescale_size


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((1024, 2048), (1024, 2048), (1024, 2048)),  # a Cityscapes frame at its own scale
        ((500, 1000), (1024, 2048), (1024, 2048)),
        ((683, 512), (1024, 2048), (1366, 1024)),  # portrait: the short edge binds (long 1366 <= 2048)
        ((512, 683), (512, 2048), (512, 683)),
        ((300, 2000), (512, 2048), (307, 2048)),  # the long edge binds
    ],
)
def test_rescale_size_takes_and_gives_h_w(size, scale, expected):
    assert rescale_size(*size, scale) == expected
    assert rescale_size(*size, scale[::-1]) == expected  # a bound on the long and short edge: either order fits


def _props(**meta) -> dict[str, str]:
    base = {k: None for k in metadata.REQUIRED if k not in ("test_scale",)}
    return {metadata.PREFIX + k: json.dumps(v) for k, v in {**base, **meta}.items()}


def test_metadata_of_older_files_reads_eval_resize_as_test_scale():
    assert metadata.decode(_props(eval_resize=[2048, 512]), "old.onnx")["test_scale"] == [512, 2048]
    assert metadata.decode(_props(eval_resize=None), "old.onnx")["test_scale"] is None
    assert metadata.decode(_props(test_scale=[1024, 2048]), "new.onnx")["test_scale"] == [1024, 2048]
    with pytest.raises(ValueError, match=r"new\.onnx: no seg metadata \['test_scale'\]"):
        metadata.decode(_props(), "new.onnx")
    with pytest.raises(ValueError, match="lacks"):
        metadata.encode({k: None for k in metadata.REQUIRED if k != "test_scale"} | {"eval_resize": [2048, 512]})


def test_test_scale_of_old_and_new_data_settings():
    """What checkpoints, exports and predictions resize to, from data settings written before (base_size (W, H))
    and since (scale (H, W))."""
    from seg.data.datamodule import test_scale_of, upgrade_data_hparams

    for data, expected in (
        ({"dataset": "ade20k", "base_size": [2048, 640]}, (640, 2048)),  # written before: (W, H)
        ({"dataset": "ade20k", "scale": [640, 2048]}, (640, 2048)),
        ({"dataset": "ade20k"}, (512, 2048)),  # the dataset's default
        ({"dataset": "ade20k", "val_mode": "full"}, None),
        ({}, None),  # folder data without a scale: images as they are
    ):
        assert test_scale_of(upgrade_data_hparams(data)) == expected, data
