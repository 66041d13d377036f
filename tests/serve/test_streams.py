"""Streams carry no empty deltas: text held back for stop-string matching (or an incomplete character) arrives with
the next chunk that has text, or with the last one, and its tokens' log-probabilities and spikes ride along, so
nothing a client reads is lost or empty. Over real HTTP, a set of seeded streams with stop strings."""

from __future__ import annotations

import pytest
from serve_helpers import stream_post

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

MESSAGES = [{"role": "user", "content": "Speak"}]
STOPS = ["e ", "\n\n", "th"]  # common in the tiny model's output: most streams hold text back at some point


def chunks_of(events: list) -> list[dict]:
    assert events[-1] == "[DONE]"
    return [e for e in events[:-1] if e["choices"]]


@pytest.mark.parametrize("seed", range(6))
def test_chat_streams_send_no_empty_deltas(client, seed):
    body = {"messages": MESSAGES, "max_tokens": 24, "seed": seed, "n": 2, "stop": STOPS, "logprobs": True}
    whole = client.post("/v1/chat/completions", json=body).json()
    spiking = {**body, "stream_options": {"include_spikes": True}}
    chunks = chunks_of(stream_post(client, "/v1/chat/completions", spiking))
    texts, entries, spikes = {}, {}, {}
    for choice in (c for chunk in chunks for c in chunk["choices"]):
        delta, i = choice["delta"], choice["index"]
        assert delta.get("content") != "", choice  # absent (role-only start, the end) or non-empty
        assert delta or choice["finish_reason"] is not None, choice
        texts[i] = texts.get(i, "") + delta.get("content", "")
        entries[i] = entries.get(i, 0) + len((choice["logprobs"] or {"content": []})["content"])
        spikes[i] = spikes.get(i, 0) + len(choice.get("spikes") or [])
    for choice in whole["choices"]:
        i = choice["index"]
        assert texts[i] == choice["message"]["content"]
        assert entries[i] == len(choice["logprobs"]["content"])  # every token's entry arrived
    assert sum(spikes.values()) == whole["usage"]["completion_tokens"]  # every token's spikes arrived


@pytest.mark.parametrize("seed", range(6))
def test_completion_streams_send_no_empty_text_before_the_end(client, seed):
    body = {"prompt": "ROMEO:", "max_tokens": 24, "seed": seed, "n": 2, "stop": STOPS, "logprobs": 1}
    whole = client.post("/v1/completions", json=body).json()
    chunks = chunks_of(stream_post(client, "/v1/completions", body))
    texts, tokens = {}, {}
    for choice in (c for chunk in chunks for c in chunk["choices"]):
        i = choice["index"]
        assert choice["text"] != "" or choice["finish_reason"] is not None, choice
        texts[i] = texts.get(i, "") + choice["text"]
        tokens[i] = tokens.get(i, 0) + len(choice["logprobs"]["tokens"])
    for choice in whole["choices"]:
        assert texts[choice["index"]] == choice["text"]
        assert tokens[choice["index"]] == len(choice["logprobs"]["tokens"])
