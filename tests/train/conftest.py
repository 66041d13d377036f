"""Fixtures of the training tests: no network, a private datasets cache, a fresh accelerate state."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, a private datasets cache, and a fresh accelerate state for each in-process run."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
