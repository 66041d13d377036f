"""The fixtures of the serving tests, loaded by the test modules that use them as a plugin
(``pytest_plugins = ["serve_fixtures"]``): a conftest.py in this folder would shadow tests/conftest.py for the
modules elsewhere that import from it by name."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import lively_weights_
from serve_helpers import RunningServer, run_server, tiny_settings

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.hub.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def server(tiny_model_dir) -> Iterator[RunningServer]:
    """A server with default behaviour, shared by the tests that only send requests."""
    with run_server(tiny_settings(tiny_model_dir, max_batch=16)) as running:
        yield running


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def deeper_model_dir(tmp_path_factory, tiny_model_dir):
    """A second tiny model with the first's tokenizer, for servers of several models: three layers where the first
    has two, and other weights."""
    path = tmp_path_factory.mktemp("deeper-spikegpt")
    config = SpikeGPTConfig.from_pretrained(tiny_model_dir)
    config.n_layer = 3
    lively_weights_(SpikeGPTForCausalLM(config), seed=4321).save_pretrained(path)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return path
