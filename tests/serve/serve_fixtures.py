"""The fixtures of the serving tests, loaded by the test modules that use them as a plugin
(``pytest_plugins = ["serve_fixtures"]``): a conftest.py in this folder would shadow tests/conftest.py for the
modules elsewhere that import from it by name."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from serve_helpers import RunningServer, run_server, tiny_settings


@pytest.fixture(scope="session")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    """A server with default behaviour, shared by the tests that only send requests."""
    with run_server(tiny_settings(tiny_model_dir, max_batch=16)) as running:
        yield running


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
