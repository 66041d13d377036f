"""The official ``openai`` Python client against the server: what users of the API will actually run."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import run_server, tiny_settings

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

EXTRA = {"ignore_eos": True}


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=30, max_retries=0)


def test_models_list(oai, server):
    assert [m.id for m in oai.models.list()] == [server.host.model_name]
    assert oai.models.retrieve(server.host.model_name).id == server.host.model_name


def test_completions(oai, server):
    result = oai.completions.create(
        model=server.host.model_name, prompt="Hello", max_tokens=8, seed=3, extra_body=EXTRA
    )
    assert len(result.choices[0].text) == 8
    assert result.usage.completion_tokens == 8
    assert result.model_extra["energy"]["generated_tokens"] == 8  # the extra field reaches the client


def test_completions_stream(oai, server):
    request = dict(model=server.host.model_name, prompt="Hello", max_tokens=8, seed=3, extra_body=EXTRA)
    whole = oai.completions.create(**request).choices[0].text
    chunks = list(oai.completions.create(**request, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].model_extra["energy"]["generated_tokens"] == 8


def test_chat(oai, server):
    result = oai.chat.completions.create(
        model=server.host.model_name,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        seed=1,
        extra_body=EXTRA,
    )
    assert result.choices[0].message.role == "assistant"
    assert result.usage.completion_tokens == 6


def test_chat_stream_with_usage(oai, server):
    request = dict(
        model=server.host.model_name,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        seed=1,
        extra_body=EXTRA,
    )
    whole = oai.chat.completions.create(**request).choices[0].message.content
    chunks = list(oai.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].model_extra["energy"]["rules"]["paper"]["energy_j"] > 0


def test_errors_map_to_the_client_exceptions(oai, server):
    with pytest.raises(openai.NotFoundError) as missing:
        oai.completions.create(model="no-such-model", prompt="Hi", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model=server.host.model_name, prompt="Hi", max_tokens=2, temperature=7)
    assert bad.value.body["param"] == "temperature"


def test_api_key(tiny_model_dir):
    with run_server(tiny_settings(tiny_model_dir, api_key="sesame")) as server:
        name = server.host.model_name
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", timeout=30, max_retries=0)
        assert good.completions.create(model=name, prompt="Hi", max_tokens=2).usage.completion_tokens <= 2
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", timeout=30, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=name, prompt="Hi", max_tokens=2)
