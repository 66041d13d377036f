"""``stream_options.include_spikes``: every token's spike counts per site on its chunk, adding up exactly to the
request's final report; the model card says how to read them; clients that do not ask see today's chunks."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import stream_post

from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.sampling import SamplingParams

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

LONG = {"ignore_eos": True}  # the random tiny model may emit end-of-text at any point


def spike_entries(chunks: list[dict]) -> dict[int, list[dict]]:
    """Each choice's spike entries, in stream order."""
    entries: dict[int, list[dict]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            entries.setdefault(choice["index"], []).extend(choice.get("spikes", []))
    return entries


def sum_counts(entries: list[dict]) -> list[int]:
    return [sum(column) for column in zip(*(e["counts"] for e in entries), strict=True)]


def test_counts_add_up_to_the_final_report(client):
    """n = 2 choices: one entry per generated token, the first covering the prompt's pass, the rest one token each;
    summed over the request they are the report's spikes at every site and its processed tokens."""
    sites = client.get("/v1/models").json()["data"][0]["spiking"]["sites"]
    body = {"prompt": "Hello world", "max_tokens": 9, "n": 2, "seed": 3, **LONG}
    events = stream_post(client, "/v1/completions", {**body, "stream_options": {"include_spikes": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    entries = spike_entries(chunks)
    assert sorted(entries) == [0, 1]
    energy = chunks[-1]["energy"]
    for per_token in entries.values():
        assert len(per_token) == 9
        # the prompt's pass (what of the prompt was computed, not restored from the state cache), then one token
        # per step
        assert [e["tokens"] for e in per_token[1:]] == [1] * 8
        for e in per_token:
            assert len(e["counts"]) == len(sites)
            assert all(isinstance(c, int) and 0 <= c <= e["tokens"] * 32 for c in e["counts"])  # width 32
    assert sum(11 - per_token[0]["tokens"] for per_token in entries.values()) == energy["cached_prompt_tokens"]
    every = entries[0] + entries[1]
    assert sum(e["tokens"] for e in every) == energy["tokens"]
    for report in energy["rules"].values():
        reported = {layer["site"]: layer["spikes"] for layer in report["layers"] if layer["site"] is not None}
        assert list(reported) == sites
        assert sum_counts(every) == list(reported.values())
    assert 0 < sum(sum_counts(every)) < energy["tokens"] * 32 * len(sites)  # real spiking, not all or nothing


def test_chat_chunks_carry_spikes_and_the_usage_chunk_none(client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 1, **LONG}
    options = {"include_spikes": True, "include_usage": True}
    events = stream_post(client, "/v1/chat/completions", {**body, "stream_options": options})
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert "spikes" not in chunks[0]["choices"][0]  # the role chunk carries no token
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5
    per_token = spike_entries(chunks)[0]
    usage = usage_chunk["usage"]
    computed = usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]  # the rest was restored
    assert len(per_token) == 5 and per_token[0]["tokens"] == computed
    strict = usage_chunk["energy"]["rules"]["strict"]
    assert sum_counts(per_token) == [layer["spikes"] for layer in strict["layers"] if layer["site"] is not None]


def test_clients_that_do_not_ask_get_todays_chunks(client):
    """The same seeded request with and without include_spikes: the same chunks but for the spikes field."""
    body = {"prompt": "Hello world", "max_tokens": 12, "seed": 8, "temperature": 0.9, **LONG}

    def comparable(events: list) -> list:
        """Each chunk without its id, time and text (how many tokens one chunk carries depends on timing)."""
        return [
            {
                **{k: v for k, v in e.items() if k not in ("id", "created", "choices")},
                "choices": [{k: v for k, v in c.items() if k != "text"} for c in e["choices"]],
            }
            for e in events[:-1]
        ]

    plain = stream_post(client, "/v1/completions", body)
    asked = stream_post(client, "/v1/completions", {**body, "stream_options": {"include_spikes": True}})
    assert not any("spikes" in c for e in plain[:-1] for c in e["choices"])
    for e in asked[:-1]:
        for c in e["choices"]:
            del c["spikes"]
    # chunk boundaries depend on timing; the text, finish reason and energy do not
    assert "".join(c["text"] for e in plain[:-1] for c in e["choices"]) == "".join(
        c["text"] for e in asked[:-1] for c in e["choices"]
    )
    assert comparable(plain)[-1] == comparable(asked)[-1]
    assert all(set(c) == {"index", "text", "logprobs", "finish_reason"} for e in plain[:-1] for c in e["choices"])


@pytest.mark.parametrize("options", [{"include_spikes": 1}, {"include_spikes": "yes"}])
def test_include_spikes_must_be_a_boolean(client, options):
    response = client.post("/v1/completions", json={"prompt": "a", "stream": True, "stream_options": options})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream_options.include_spikes"


def test_the_model_card_says_how_to_read_the_counts(client, server):
    card = client.get(f"/v1/models/{server.host.model_name}").json()
    assert card["spiking"] == {
        "placement": "residual",
        "sites": ["embedding", "blocks.0.att.lif", "blocks.0.ffn.lif", "blocks.1.att.lif", "blocks.1.ffn.lif"],
        "site_width": 32,
        "n_layer": 2,
    }


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_engine_token_spikes_sum_to_the_final_stats(tiny_model_dir, batch_invariant):
    """Beside a request that does not ask (and gets no spikes), in both decoding paths."""
    model, tokenizer = load_model(tiny_model_dir)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=3, batch_invariant=batch_invariant))
    params = SamplingParams(max_tokens=7, ignore_eos=True, seed=4)
    requests = [
        GenerationRequest("asks", tokenizer.encode("To be"), params, token_spikes=True),
        GenerationRequest("quiet", tokenizer.encode("or not"), params),
    ]
    events = [event for step in generate(engine, requests) for event in step]
    asks = [e for e in events if e.request_id == "asks"]
    assert all(e.spikes is None for e in events if e.request_id == "quiet")
    assert [e.spikes.tokens for e in asks] == [5] + [1] * 6
    final = asks[-1].stats
    assert [sum(c) for c in zip(*(e.spikes.counts for e in asks), strict=True)] == final.counts[0].long().tolist()
    assert sum(e.spikes.tokens for e in asks) == int(final.tokens[0])
    # each later entry is the spikes of one recurrent step on the previous token: recompute them
    ids = tokenizer.encode("To be") + [e.token.token_id for e in asks]
    with torch.inference_mode():
        out = model(torch.tensor([ids[:5]]), use_cache=True, output_spike_stats=True)
        assert out.spike_stats.counts[0].long().tolist() == asks[0].spikes.counts
        state = out.state
        for position, event in enumerate(asks[1:], start=5):
            out = model(torch.tensor([[ids[position]]]), state=state, output_spike_stats=True)
            assert out.spike_stats.counts[0].long().tolist() == event.spikes.counts
            state = out.state
