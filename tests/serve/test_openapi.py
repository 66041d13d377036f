"""The OpenAPI document describes every request body, status and media type: schemathesis generates requests
from it, valid ones and invalid ones, sends them to a real server and checks each answer against the document:
an invalid request is refused, and a valid one is accepted (ST202), because the document states what the
server's validation refuses, its own limits included. All but one: a text prompt's or a chat's length in tokens,
which no JSON schema can state (it depends on the tokenizer and the chat template; the document says it in words),
so that refusal alone is excused.

Bounded: a few examples per operation and mode, on a server whose caps keep every generation short."""

from __future__ import annotations

import json
import os
import re

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve_helpers import run_server, tiny_settings

from spikegpt.runtime.sampling import INT64_MAX
from spikegpt.serve.app import create_app
from spikegpt.serve.openapi import openapi_document
from spikegpt.serve.protocol import SERVER_LIMIT
from spikegpt.serve.settings import ServeSettings

# the server's refusal of a prompt longer than its limit
TOO_LONG = re.compile(r"(prompt|messages): the prompt has \d+ tokens; this server takes at most \d+")


def refused_as_too_long_text(response, case) -> bool:
    """Whether the server refused a text prompt or a chat as too long: the one refusal no JSON schema can state (a
    text's length in tokens depends on the tokenizer, a chat's on the template too); a list of token ids too long
    is stated (maxItems) and never excused."""
    if response.status_code != 400:
        return False
    message = response.json()["error"]["message"]
    if not TOO_LONG.fullmatch(message):
        return False
    prompt = case.body.get("prompt")
    has_text = isinstance(prompt, str) or (isinstance(prompt, list) and any(isinstance(p, str) for p in prompt))
    return message.startswith("messages:") or has_text


def valid_requests_are_accepted(ctx, response, case):
    """ST202 (positive_data_acceptance), excusing only a text prompt or a chat refused as too long."""
    if refused_as_too_long_text(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    valid_requests_are_accepted,
]
EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", 12))  # more for a deeper search
CAPS = dict(max_tokens_cap=4, max_prompt_tokens=32, max_batch=4, max_queue=8)

# the document of an app that is not started (nothing is loaded): the same routes a running server documents
UNLOADED = create_app(ServeSettings()).openapi()
ROUTES = {
    op.label: op for op in (result.ok() for result in schemathesis.openapi.from_dict(UNLOADED).get_all_operations())
}
# invalid requests for the operations that take a body (a path parameter may be any string)
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(ROUTES)] + [
    (label, GenerationMode.NEGATIVE) for label, op in sorted(ROUTES.items()) if "requestBody" in op.definition.raw
]


@pytest.fixture(scope="module")
def api_server(tiny_model_dir):
    with run_server(tiny_settings(tiny_model_dir, **CAPS)) as server:
        yield server


@pytest.fixture(scope="module")
def document(api_server) -> dict:
    """The document as the server builds it, from the running server's limits."""
    return openapi_document(create_app(ServeSettings()), api_server.host.limits)


@pytest.fixture(scope="module")
def vocab_size(tiny_model_dir) -> int:
    return json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def operations(document) -> dict:
    return {
        op.label: op for op in (result.ok() for result in schemathesis.openapi.from_dict(document).get_all_operations())
    }


def body_schema(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


def valid_by(document: dict, path: str, body: dict) -> bool:
    """Whether the document allows ``body`` for ``POST path`` (by jsonschema_rs, schemathesis's own validator)."""
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]}).is_valid(body)


def answer(server, path: str, body: dict) -> int:
    with server.client() as client:
        return client.post(path, json=body).status_code


CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
# bodies each decision is about, and whether the document allows them and the server accepts them (under CAPS)
AGREEMENT = [
    # a whole float is an integer, as JSON Schema counts; true, "2" and 1.5 are not
    ("/v1/completions", {"prompt": "Hi", "n": 1.0, "seed": -1097.0, "max_tokens": 2.0}, True),
    ("/v1/completions", {"prompt": [[1.0, 2.0]], "top_k": 5.0, "logprobs": 1.0, "max_tokens": 1}, True),
    ("/detokenize", {"tokens": [1.0, 2.0]}, True),
    ("/v1/completions", {"prompt": "Hi", "n": True}, False),
    ("/v1/completions", {"prompt": "Hi", "n": "2"}, False),
    ("/v1/completions", {"prompt": "Hi", "n": 1.5}, False),
    ("/v1/completions", {"prompt": [1, True]}, False),
    # rules between fields
    ("/tokenize", {"prompt": "Hi"}, True),
    ("/tokenize", {**CHAT, "prompt": None}, True),
    ("/tokenize", {}, False),
    ("/tokenize", {"prompt": None, "messages": None}, False),
    ("/tokenize", {"prompt": "Hi", **CHAT}, False),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 1, "stream_options": None}, True),
    ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, False),
    ("/v1/chat/completions", {**CHAT, "stream": False, "stream_options": {}}, False),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 1, "logprobs": True, "top_logprobs": 2}, True),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, False),
    # the server's limits: at most 4 tokens generated, 12 sequences held, 32 token ids a prompt
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 4}, True),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 5}, False),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 5}, False),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 4, "max_tokens": 1}, True),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 5, "max_tokens": 1}, False),
    ("/v1/completions", {"prompt": [1] * 32, "n": 12, "max_tokens": 1}, True),
    ("/v1/completions", {"prompt": [1] * 33, "max_tokens": 1}, False),
    ("/v1/chat/completions", {**CHAT, "n": 13, "max_tokens": 1}, False),
    # unsupported fields are accepted only empty (or neutral); a stop string is never empty
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {}, "suffix": "", "best_of": 1, "max_tokens": 1}, True),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"5": 1.0}}, False),
    ("/v1/completions", {"prompt": "Hi", "suffix": "x"}, False),
    ("/v1/completions", {"prompt": "Hi", "best_of": 2}, False),
    ("/v1/completions", {"prompt": "Hi", "stop": ["a", ""]}, False),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, False),
]


def test_the_served_document_is_the_one_tested(api_server, document):
    with api_server.client() as client:
        assert client.get("/openapi.json").json() == document


@pytest.mark.parametrize(("path", "body", "accepted"), AGREEMENT, ids=[f"{p} {json.dumps(b)}" for p, b, _ in AGREEMENT])
def test_the_document_allows_what_the_server_accepts(api_server, document, path, body, accepted):
    assert valid_by(document, path, body) == accepted
    assert answer(api_server, path, body) == (200 if accepted else 400)


def test_detokenize_takes_every_id_of_the_vocabulary_and_no_other(api_server, document, vocab_size):
    for tokens, accepted in [([0, vocab_size - 1], True), ([vocab_size], False)]:
        assert valid_by(document, "/detokenize", {"tokens": tokens}) == accepted
        assert answer(api_server, "/detokenize", {"tokens": tokens}) == (200 if accepted else 400)


def test_the_document_states_the_served_models_limits(document, vocab_size):
    completion, chat = body_schema(document, "CompletionRequest"), body_schema(document, "ChatCompletionRequest")
    token_ids = completion["properties"]["prompt"]["anyOf"][1]
    assert body_schema(document, "DetokenizeRequest")["properties"]["tokens"]["items"]["maximum"] == vocab_size - 1
    assert token_ids["items"]["maximum"] == vocab_size - 1
    assert token_ids["maxItems"] == CAPS["max_prompt_tokens"]
    for schema, field in [(completion, "prompt"), (chat, "messages")]:  # a text's limit, in words
        assert f"at most {CAPS['max_prompt_tokens']} tokens" in schema["properties"][field]["description"], field
    for schema, field in [(completion, "max_tokens"), (chat, "max_tokens"), (chat, "max_completion_tokens")]:
        assert schema["properties"][field]["anyOf"][0]["maximum"] == CAPS["max_tokens_cap"], field
    capacity = CAPS["max_batch"] + CAPS["max_queue"]  # 12: fewer than the 16 choices a request may ask for
    assert chat["properties"]["n"]["anyOf"][0]["maximum"] == capacity
    # a stop token needs not be in the vocabulary (one outside it never matches)
    assert completion["properties"]["stop_token_ids"]["anyOf"][0]["items"]["maximum"] == INT64_MAX


def test_a_document_without_a_loaded_model_states_no_limits():
    assert SERVER_LIMIT not in json.dumps(UNLOADED)
    assert body_schema(UNLOADED, "DetokenizeRequest")["properties"]["tokens"]["items"]["maximum"] == INT64_MAX


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_every_answer_conforms_to_the_openapi_document(api_server, operations, label, mode):
    operation = operations[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    # derandomized: the same examples every run (a failure reproduces; CI never flakes on a new draw)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )
    def check(case):
        case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=30)

    check()
