"""POST /v1/completions over real HTTP: the response shape, streaming, parameters, stop strings, seeds, logprobs."""

from __future__ import annotations

import pytest
from serve_helpers import completion_text, stream_post

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

LONG = {"ignore_eos": True}  # the random tiny model may emit end-of-text at any point; these tests need lengths


def complete(client, **body) -> dict:
    response = client.post("/v1/completions", json={"prompt": "Hello world", **body})
    assert response.status_code == 200, response.text
    return response.json()


def stream(client, **body) -> list:
    return stream_post(client, "/v1/completions", {"prompt": "Hello world", **body})


def check_energy(energy: dict, generated: int) -> None:
    assert 0 < energy["firing_rate"] < 1
    assert energy["generated_tokens"] == generated
    assert set(energy["rules"]) == {"strict", "paper", "event"}
    for report in energy["rules"].values():
        assert report["energy_j"] > 0
        assert report["layers"]


def test_completion_shape_usage_and_energy(client, server):
    body = complete(client, max_tokens=12, seed=1, **LONG)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == server.host.model_name
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert len(choice["text"]) == 12  # one character per token
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached in (0, 8)  # the prompt's first 8-token chunk, when an earlier request on this server read it
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 12,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": cached},
        "unknown_characters": 0,
    }
    check_energy(body["energy"], 12)
    # the model processed the prompt (but what came from the cache) and every generated token but the last
    assert body["energy"]["tokens"] == 11 - cached + 12 - 1 and body["energy"]["cached_prompt_tokens"] == cached


def test_streaming_matches_non_streaming_and_ends_with_energy(client):
    request = {"max_tokens": 30, "seed": 5, "temperature": 0.9, **LONG}
    whole = complete(client, **request)
    events = stream(client, **request)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert completion_text(events) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("energy" not in c for c in chunks[:-1])
    check_energy(chunks[-1]["energy"], 30)
    if chunks[-1]["energy"]["cached_prompt_tokens"] == whole["energy"]["cached_prompt_tokens"]:
        assert chunks[-1]["energy"]["rules"] == whole["energy"]["rules"]  # same spikes, same estimate


def test_include_usage_adds_a_final_usage_chunk(client):
    events = stream(client, max_tokens=7, seed=2, stream_options={"include_usage": True}, **LONG)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == []
    cached = usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached in (0, 8) and usage_chunk["energy"]["cached_prompt_tokens"] == cached
    assert usage_chunk["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": cached},
        "unknown_characters": 0,
    }
    check_energy(usage_chunk["energy"], 7)
    assert all(c["usage"] is None for c in chunks)


def test_same_seed_same_text_and_other_seeds_differ(client):
    request = {"max_tokens": 40, "temperature": 1.0, "top_p": 0.95, **LONG}
    first = complete(client, seed=11, **request)["choices"][0]["text"]
    assert complete(client, seed=11, **request)["choices"][0]["text"] == first
    others = {complete(client, seed=s, **request)["choices"][0]["text"] for s in (12, 13, 14)}
    assert first not in others


def test_greedy_is_deterministic_without_a_seed(client):
    texts = {complete(client, max_tokens=25, temperature=0, **LONG)["choices"][0]["text"] for _ in range(2)}
    assert len(texts) == 1


def test_n_choices_differ_and_each_is_reproducible(client):
    body = complete(client, max_tokens=20, n=3, seed=100, **LONG)
    texts = [c["text"] for c in sorted(body["choices"], key=lambda c: c["index"])]
    assert [c["index"] for c in sorted(body["choices"], key=lambda c: c["index"])] == [0, 1, 2]
    assert len(set(texts)) == 3
    # choice i uses seed + i
    assert complete(client, max_tokens=20, seed=101, **LONG)["choices"][0]["text"] == texts[1]
    assert body["usage"]["completion_tokens"] == 60
    assert body["usage"]["prompt_tokens"] == 11  # the prompt counts once, as OpenAI counts it
    assert body["energy"]["generated_tokens"] == 60


def test_n_choices_stream_too(client):
    events = stream(client, max_tokens=9, n=2, seed=100, **LONG)
    texts = {0: "", 1: ""}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    body = complete(client, max_tokens=9, n=2, seed=100, **LONG)
    assert texts == {c["index"]: c["text"] for c in body["choices"]}


def test_several_prompts_and_token_id_prompts(client, server):
    ids = server.host.tokenizer.encode("Hello world")
    by_text = complete(client, max_tokens=8, seed=4, **LONG)["choices"][0]["text"]
    by_ids = complete(client, prompt=ids, max_tokens=8, seed=4, **LONG)["choices"][0]["text"]
    assert by_ids == by_text
    body = complete(client, prompt=["Hello world", "Other"], max_tokens=8, seed=4, **LONG)
    choices = sorted(body["choices"], key=lambda c: c["index"])
    assert choices[0]["text"] == by_text
    assert body["usage"]["prompt_tokens"] == 11 + 5


def test_stop_string_spanning_tokens_is_found_and_cut(client):
    request = {"max_tokens": 60, "temperature": 0, **LONG}
    free = complete(client, **request)["choices"][0]["text"]
    stop = free[20:24]  # four characters = four tokens of the character vocabulary
    expected = free[: free.index(stop)]
    body = complete(client, stop=[stop, "never-there"], **request)
    assert body["choices"][0]["text"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    events = stream(client, **request, stop=stop)
    assert completion_text(events) == expected  # held back while it might be the stop string, never sent
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_stop_token_ids_end_with_stop(client, server):
    free = complete(client, max_tokens=30, temperature=0, **LONG)["choices"][0]["text"]
    token = server.host.tokenizer.convert_tokens_to_ids(free[10])
    body = complete(client, max_tokens=30, temperature=0, stop_token_ids=[token], **LONG)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["text"] == free[: free.index(free[10])]


def test_echo_puts_the_prompt_first(client):
    plain = complete(client, max_tokens=6, seed=9, **LONG)["choices"][0]["text"]
    echoed = complete(client, max_tokens=6, seed=9, echo=True, **LONG)["choices"][0]["text"]
    assert echoed == "Hello world" + plain
    events = stream(client, max_tokens=6, seed=9, echo=True, **LONG)
    assert completion_text(events) == "Hello world" + plain


def test_logprobs_are_reported_per_token(client):
    body = complete(client, max_tokens=5, seed=3, logprobs=3, **LONG)
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == list(range(5))
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert value <= 0
        assert len(top) == 3
        assert max(top.values()) >= value  # the best alternatives are at least as likely as the chosen token
        if token in top:
            assert top[token] == pytest.approx(value)


def test_echo_with_logprobs_scores_the_prompt(client):
    body = complete(client, prompt="abc", max_tokens=2, seed=3, logprobs=1, echo=True, **LONG)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"][:3] == ["a", "b", "c"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(v <= 0 for v in logprobs["token_logprobs"][1:])
    assert len(logprobs["tokens"]) == 5
    assert logprobs["text_offset"] == [0, 1, 2, 3, 4]


def test_sampling_filters_and_penalties_are_accepted(client):
    body = complete(
        client,
        max_tokens=20,
        seed=8,
        temperature=0.7,
        top_k=5,
        top_p=0.8,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.3,
        **LONG,
    )
    assert len(body["choices"][0]["text"]) == 20


def test_top_k_one_is_greedy(client):
    greedy = complete(client, max_tokens=20, temperature=0, **LONG)["choices"][0]["text"]
    assert complete(client, max_tokens=20, temperature=1.5, top_k=1, seed=3, **LONG)["choices"][0]["text"] == greedy


def test_empty_prompt_starts_from_end_of_text(client):
    body = complete(client, prompt="", max_tokens=4, seed=1, **LONG)
    assert body["usage"]["prompt_tokens"] == 1
