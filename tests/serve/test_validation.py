"""One validator: requests are checked once, in the protocol layer, against the one table of limits the sampler
and engine share; null means the default; a temperature or top_p too small to represent is greedy decoding; only
JSON bodies are read."""

from __future__ import annotations

import pytest
from test_errors import CHAT, OK, check_error

from spikegpt.errors import GenerationError
from spikegpt.runtime.sampling import GREEDY_BELOW, LIMITS, SamplingParams
from spikegpt.serve.protocol import ChatCompletionRequest, CompletionRequest

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

# every field (but model, a string) the OpenAI spec lets a client send as null; vLLM's extras too
NULLABLE = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "stop_token_ids",
    "seed",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "max_tokens",
]
SEEDED = {**OK, "max_tokens": 6, "seed": 11}


@pytest.mark.parametrize("field", [*NULLABLE, "echo", "logprobs", "best_of", "suffix"])
def test_null_means_the_default_in_completions(client, field):
    expected = client.post("/v1/completions", json=SEEDED)
    answer = client.post("/v1/completions", json={**SEEDED, field: None})
    assert answer.status_code == 200, answer.text
    if field not in ("max_tokens", "seed"):  # the defaults: 16 tokens; a random seed
        assert answer.json()["choices"] == expected.json()["choices"]


@pytest.mark.parametrize("field", [*NULLABLE, "logprobs", "top_logprobs", "max_completion_tokens", "tools"])
def test_null_means_the_default_in_chat(client, field):
    body = {**CHAT, "max_tokens": 6, "seed": 11}
    expected = client.post("/v1/chat/completions", json=body)
    answer = client.post("/v1/chat/completions", json={**body, field: None})
    assert answer.status_code == 200, answer.text
    if field not in ("max_tokens", "seed"):  # the defaults: the server's cap; a random seed
        assert answer.json()["choices"] == expected.json()["choices"]


def test_the_official_client_sending_none_is_served(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    result = client.completions.create(
        model=server.host.model_name, prompt="Hi", max_tokens=3, temperature=None, top_p=None
    )
    assert result.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 1e-300},  # becomes 0 in float32
        {"temperature": 1e-39},  # a float32 subnormal
        {"temperature": GREEDY_BELOW / 2},
        {"top_p": 1e-46},  # becomes 0 in float32
        {"top_p": 1e-300},
        {"top_p": GREEDY_BELOW / 2, "temperature": 1.5},
    ],
)
def test_a_temperature_or_top_p_below_the_threshold_is_greedy(client, extra):
    body = {**OK, "max_tokens": 12, "ignore_eos": True}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    tiny = client.post("/v1/completions", json={**body, **extra, "seed": 5})
    assert tiny.status_code == 200
    assert tiny.json()["choices"][0]["text"] == greedy != ""


def _bounds(model, name: str) -> tuple:
    branch = model.model_json_schema()["properties"][name]["anyOf"][0]
    low = branch.get("minimum", branch.get("exclusiveMinimum"))
    return low, branch["maximum"], "exclusiveMinimum" in branch


@pytest.mark.parametrize("model", [CompletionRequest, ChatCompletionRequest])
def test_the_request_models_take_their_bounds_from_the_one_table(model):
    pairs = {name: name for name in LIMITS if name in model.model_fields}
    if model is ChatCompletionRequest:  # chat's logprobs is a flag; its count is top_logprobs
        pairs |= {"max_tokens": "chat_max_tokens", "max_completion_tokens": "chat_max_tokens"}
        pairs |= {"top_logprobs": "logprobs"}
        del pairs["logprobs"]
    assert {"temperature", "top_p", "top_k", "seed", "n", "max_tokens"} <= set(pairs)
    for field, name in pairs.items():
        bound = LIMITS[name]
        assert _bounds(model, field) == (bound.low, bound.high, bound.low_open), field


@pytest.mark.parametrize(
    ("name", "inside", "outside"),
    [
        ("temperature", 2.0, 2.5),  # the sampler once took up to 100, the API 2
        ("top_k", -1, -2),  # the sampler once refused -1, which the API takes (off)
        ("top_p", 1.0, 0.0),
        ("repetition_penalty", 0.01, 0.001),
        ("seed", 2**63 - 1, 2**63),
    ],
)
def test_the_sampler_holds_to_the_same_limits_as_the_api(client, name, inside, outside):
    SamplingParams(**{name: inside})
    with pytest.raises(GenerationError):
        SamplingParams(**{name: outside})
    assert client.post("/v1/completions", json={**OK, name: inside}).status_code == 200
    check_error(client.post("/v1/completions", json={**OK, name: outside}), 400, name)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_only_json_bodies_are_read(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/completions", "/tokenize"):
        response = client.post(path, content=b'{"prompt": "Hi", "max_tokens": 2}', headers=headers)
        error = check_error(response, 415)
        assert error["code"] == "unsupported_media_type"
    ok = client.post("/v1/completions", content=b'{"prompt": "Hi"}', headers={"content-type": "application/json"})
    assert ok.status_code == 200
