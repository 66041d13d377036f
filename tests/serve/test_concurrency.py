"""Continuous batching must not change results: 16 simultaneous streams, each equal to the same request alone."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from serve_helpers import run_server, tiny_settings

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

CONCURRENCY = 16


def request(i: int) -> dict:
    """Sixteen different requests: prompts, seeds and sampling settings all differ."""
    return {
        "prompt": f"Request {i}: " + "the quick brown fox " * (i % 3 + 1),
        "max_tokens": 120,
        "seed": 1000 + i,
        "temperature": [1.0, 0.7, 0.0, 1.3][i % 4],
        "top_p": [1.0, 0.9][i % 2],
        "top_k": [0, 0, 20][i % 3],
        "ignore_eos": True,
        "logprobs": 1,  # compared too: the values show any difference in the logits, to the last bit
        "stream": True,
    }


async def stream_text(client: httpx.AsyncClient, body: dict, log: list, i: int) -> tuple:
    """The stream's text, token log-probabilities and energy report."""
    text, logprobs, energy = "", [], None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            choice = chunk["choices"][0]
            if not text:
                log.append(("first", i))
            text += choice["text"]
            logprobs += choice["logprobs"]["token_logprobs"]
            if choice["finish_reason"] is not None:
                log.append(("finished", i))
                energy = chunk["energy"]
    return text, logprobs, energy


async def run_all(url: str, bodies: list[dict], log: list) -> list[tuple]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(stream_text(client, b, log, i) for i, b in enumerate(bodies)))


def check_concurrent_equals_alone(server) -> None:
    assert server.host.settings.max_batch >= CONCURRENCY
    bodies = [request(i) for i in range(CONCURRENCY)]
    alone = [asyncio.run(run_all(server.url, [body], []))[0] for body in bodies]
    log: list = []
    together = asyncio.run(run_all(server.url, bodies, log))
    # the premise: every stream had started before the first one finished, so they really shared batches
    first_finish = next(n for n, (kind, _) in enumerate(log) if kind == "finished")
    assert sorted(i for kind, i in log[:first_finish] if kind == "first") == list(range(CONCURRENCY))
    assert all(len(logprobs) == 120 for _, logprobs, _ in together)
    for i in range(CONCURRENCY):
        (text, logprobs, energy), (text_alone, logprobs_alone, energy_alone) = together[i], alone[i]
        assert (text, logprobs) == (text_alone, logprobs_alone), f"request {i} changed under concurrency"
        # the energy covers what was computed: the alone run cached prompt states the concurrent run starts from
        computed_or_cached = energy["tokens"] + energy["cached_prompt_tokens"]
        assert computed_or_cached == energy_alone["tokens"] + energy_alone["cached_prompt_tokens"]
        if energy["cached_prompt_tokens"] == energy_alone["cached_prompt_tokens"]:
            assert energy == energy_alone


def test_sixteen_concurrent_streams_equal_each_request_alone(server):
    check_concurrent_equals_alone(server)


@pytest.mark.slow
def test_the_compiled_step_keeps_batch_invariance(tiny_model_dir):
    with run_server(tiny_settings(tiny_model_dir, max_batch=CONCURRENCY, compile=True)) as server:
        check_concurrent_equals_alone(server)
