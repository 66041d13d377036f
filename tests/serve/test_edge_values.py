"""Values at the edges of their types, in every field of every endpoint, never hurt the server: each answer is a
200 or a 400 with an OpenAI error body, a long stream running beside them finishes normally, and afterwards the
server still admits ``--max-batch`` + ``--max-queue`` sequences (no slot or queue place leaked)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from serve_helpers import run_server, sse_events, tiny_settings
from test_overload import wait_for

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INTEGERS = [INT64_MIN - 1, INT64_MIN, -1, 0, INT64_MAX, INT64_MAX + 1, 2**64, 10**30]
FLOAT32_MIN_NORMAL = 1.1754943508222875e-38
FLOAT32_MIN_SUBNORMAL = 1.401298464324817e-45
FLOAT32_MAX = 3.4028234663852886e38
FLOATS = [
    FLOAT32_MIN_NORMAL,
    FLOAT32_MIN_SUBNORMAL,
    FLOAT32_MIN_SUBNORMAL / 4,  # rounds to 0 in float32
    5e-324,  # the smallest float64
    1e-300,
    -FLOAT32_MIN_SUBNORMAL,
    FLOAT32_MAX,
    FLOAT32_MAX * 2,  # beyond float32
    1.7976931348623157e308,
    -1.7976931348623157e308,
]
HUGE_INTS = list(range(100_000))
HUGE_STRINGS = ["a"] * 50_000

COMPLETION = {"prompt": "Hi", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
NUMBER_FIELDS = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "n",
    "seed",
    "max_tokens",
]


def edge_requests() -> list[tuple[str, dict]]:
    """(path, body) for every edge value in every field."""
    out = []
    numbers = INTEGERS + FLOATS
    for field in NUMBER_FIELDS:
        for value in numbers:
            out.append(("/v1/completions", {**COMPLETION, field: value}))
            out.append(("/v1/chat/completions", {**CHAT, field: value}))
    for value in numbers:
        out += [
            ("/v1/completions", {**COMPLETION, "logprobs": value}),
            ("/v1/completions", {**COMPLETION, "best_of": value}),
            ("/v1/completions", {**COMPLETION, "prompt": [value]}),
            ("/v1/completions", {**COMPLETION, "prompt": [[1, value]]}),
            ("/v1/completions", {**COMPLETION, "stop_token_ids": [value]}),
            ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": value}),
            ("/v1/chat/completions", {**CHAT, "max_completion_tokens": value}),
            ("/detokenize", {"tokens": [value]}),
        ]
    out += [
        ("/v1/completions", {**COMPLETION, "prompt": HUGE_INTS}),
        ("/v1/completions", {**COMPLETION, "prompt": [[1]] * 10_000}),
        ("/v1/completions", {**COMPLETION, "prompt": HUGE_STRINGS}),
        ("/v1/completions", {**COMPLETION, "stop": HUGE_STRINGS}),
        ("/v1/completions", {**COMPLETION, "stop_token_ids": HUGE_INTS}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a"}] * 20_000}),
        ("/v1/chat/completions", {**CHAT, "stop": HUGE_STRINGS}),
        ("/tokenize", {"prompt": "a" * 100_000}),
        ("/detokenize", {"tokens": HUGE_INTS}),
    ]
    return out


@pytest.fixture(scope="module")
def small(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, max_batch=2, max_queue=2, max_prompt_tokens=256, max_tokens_cap=2000)
    with run_server(settings) as server:
        yield server


def check_answer(client, path: str, body: dict) -> int:
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), (path, str(body)[:200], response.text[:300])
    if response.status_code == 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert error["type"] == "invalid_request_error" and "Traceback" not in error["message"]
    else:
        assert "error" not in response.json()
    return response.status_code


def test_edge_values_in_every_field_never_hurt_the_server(small):
    requests = edge_requests()
    long_body = {"prompt": "Hello", "max_tokens": 2000, "ignore_eos": True, "seed": 3, "stream": True}
    # a few requests at a time beside the long stream, never more sequences than the server holds (so no 429)
    senders = small.host.settings.max_batch + small.host.settings.max_queue - 1
    with (
        small.client() as client,  # httpx clients are thread-safe: one connection per request in flight
        small.client() as beside,
        beside.stream("POST", "/v1/completions", json=long_body) as long_stream,
        ThreadPoolExecutor(senders) as pool,
    ):
        assert long_stream.status_code == 200
        lines = long_stream.iter_lines()
        first = next(line for line in lines if line)
        statuses = list(pool.map(lambda request: check_answer(client, *request), requests))
        rest = [first, *(line for line in lines if line)]
    events = [line.removeprefix("data: ") for line in rest]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert "error" not in last and last["choices"][0]["finish_reason"] == "length"
    assert sum(len(c["text"]) for e in events[:-1] for c in json.loads(e)["choices"]) > 0
    assert statuses.count(200) > 50 and statuses.count(400) > 100  # both kinds were exercised
    wait_for(lambda: small.host.worker.outstanding == 0)
    # every slot and queue place is free again: max_batch + max_queue streams are all admitted
    capacity = small.host.settings.max_batch + small.host.settings.max_queue
    body = {"prompt": "Hi", "max_tokens": 5, "ignore_eos": True, "stream": True}
    with ExitStack() as stack:
        responses = []
        for _ in range(capacity):
            client = stack.enter_context(small.client())
            responses.append(stack.enter_context(client.stream("POST", "/v1/completions", json=body)))
        assert [r.status_code for r in responses] == [200] * capacity
        for response in responses:
            events = sse_events(response)
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
