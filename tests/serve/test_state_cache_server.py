"""The prefix-state cache through real servers: usage.prompt_tokens_details.cached_tokens, the energy field and
/metrics for a miss then a hit, the same text either way, and the disk tier across a server restart."""

from __future__ import annotations

from serve_helpers import metric_values, run_server, tiny_settings

PROMPT = "The quick brown fox jumps over the lazy dog, again and again; " * 2  # 124 characters, one token each
BODY = {"prompt": PROMPT, "max_tokens": 6, "temperature": 1.0, "seed": 5, "ignore_eos": True}


def complete(client) -> dict:
    response = client.post("/v1/completions", json=BODY)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_hit_is_reported_and_accounted_and_survives_a_restart(tiny_model_dir, tmp_path):
    settings = tiny_settings(tiny_model_dir, prefill_chunk=8, state_cache_dir=str(tmp_path))
    with run_server(settings) as server, server.client() as client:
        before = metric_values(client)
        miss, hit = complete(client), complete(client)
        after = metric_values(client)
    prompt_tokens = miss["usage"]["prompt_tokens"]
    assert miss["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = hit["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == prompt_tokens // 8 * 8 > 0  # the prompt's last chunk boundary, stored by the first request
    assert hit["choices"][0]["text"] == miss["choices"][0]["text"]
    # the energy covers what was computed: fewer tokens for the hit, and it says how many came from the cache
    assert miss["energy"]["cached_prompt_tokens"] == 0 and hit["energy"]["cached_prompt_tokens"] == cached
    assert miss["energy"]["tokens"] - hit["energy"]["tokens"] == cached
    assert after[("spikegpt:state_cache_hits_total",)] - before[("spikegpt:state_cache_hits_total",)] == 1
    assert after[("spikegpt:state_cache_misses_total",)] - before[("spikegpt:state_cache_misses_total",)] == 1
    assert after[("spikegpt:state_cache_cached_tokens_total",)] == cached
    assert after[("spikegpt:state_cache_bytes", ("tier", "memory"))] > 0
    assert after[("spikegpt:state_cache_entries", ("tier", "disk"))] > 0
    # a new server on the same directory starts warm
    with run_server(settings) as server, server.client() as client:
        again = complete(client)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= cached
    assert again["choices"][0]["text"] == miss["choices"][0]["text"]


def test_the_cache_off_reports_no_cached_tokens(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, prefill_chunk=8, state_cache_mb=0)
    with run_server(settings) as server, server.client() as client:
        first, second = complete(client), complete(client)
        assert "spikegpt:state_cache_hits_total" not in client.get("/metrics").text
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
