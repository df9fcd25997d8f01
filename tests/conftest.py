"""Fixtures shared by several test files (defined once here, so a session fixture is built once per run:
importing it into two test modules would make two fixtures and train the run twice)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_config

from seg.data.synthetic import write_demo
from seg.training.cli import main


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 train / 7 val (odd, for DDP) demo scenes of 48x48, 5 classes."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_demo(root, splits={"train": 12, "val": 7}, size=48)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 6-step run (validated at steps 3 and 6); its run dir."""
    tmp = tmp_path_factory.mktemp("trained")
    config = tiny_config(tmp / "cfg.yaml", tiny_data, tmp / "run")
    main(["--config", str(config)])
    return tmp / "run"


@pytest.fixture
def offline_timm(monkeypatch):
    """An offline machine without a Hugging Face cache: every timm weight download raises what huggingface_hub
    raises then (LocalEntryNotFoundError)."""
    import timm.models._builder as builder
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache (simulated)")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    monkeypatch.setattr(builder, "download_cached_file", offline, raising=False)


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """A 127.0.0.1 server standing in for download.openmmlab.com (tests/hub_server.py): every published URL is
    redirected to it (``SEG_ZOO_URL_PREFIX``), and the torch hub cache is a fresh folder (``TORCH_HOME``)."""
    from hub_server import HubServer

    root = tmp_path / "served"
    root.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server = HubServer(root, tmp_path / "torch_home" / "hub" / "checkpoints")
    monkeypatch.setenv("SEG_ZOO_URL_PREFIX", server.url)
    yield server
    server.close()
