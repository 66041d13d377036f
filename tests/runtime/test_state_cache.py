"""The prefix-state cache on its own: keys, verification, the memory bound, and the disk tier across restarts
(another model's files and corrupted files skipped with one warning; the directory's size bounded)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import lively_weights_, tiny_config

from spikegpt import SpikeGPTForCausalLM
from spikegpt.modeling.state import RecurrentState
from spikegpt.runtime.state_cache import StateCache, model_fingerprint

CHUNK = 4


def state(value: float) -> RecurrentState:
    s = RecurrentState.fresh(1, 2, 8)
    return RecurrentState(*(torch.full_like(t, value) for t in s.tensors()))


def put(cache: StateCache, tokens: list[int], value: float) -> None:
    cache.store(tokens, cache.keys(tokens)[-1], state(value))


def test_longest_verified_prefix_within_the_limit():
    cache = StateCache(CHUNK, "t", 1 << 20)
    tokens = list(range(20))
    put(cache, tokens[:4], 1.0)
    put(cache, tokens[:12], 3.0)
    assert cache.lookup(tokens, 19)[0] == 12
    assert cache.lookup(tokens, 11)[0] == 4  # the limit keeps at least one token to compute
    assert cache.lookup(tokens[:12], 11)[0] == 4
    other = [99, *tokens[1:]]
    assert cache.lookup(other, 19) == (0, None)
    _, found = cache.lookup(tokens, 19)
    found.att_v += 1  # a copy: the entry is unchanged
    assert torch.equal(cache.lookup(tokens, 19)[1].att_v, state(3.0).att_v)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.cached_tokens) == (5, 1, 12 + 4 + 4 + 12 + 12)


def test_a_hash_match_with_other_tokens_is_a_miss():
    cache = StateCache(CHUNK, "t", 1 << 20)
    cache.store([1, 2, 3, 4], cache.keys([5, 6, 7, 8])[0], state(1.0))  # stored under another prefix's key
    assert cache.lookup([5, 6, 7, 8, 9], 4) == (0, None)


def test_memory_stays_within_its_bound_under_many_prefixes():
    one = sum(t.nbytes for t in state(0).tensors()) + CHUNK * 4
    cache = StateCache(CHUNK, "t", 10 * one)
    for i in range(100):
        put(cache, [i, i, i, i], float(i))
        assert cache.stats.bytes <= 10 * one
    assert cache.stats.entries == 10 and cache.stats.evictions == 90
    assert cache.lookup([99] * 5, 4)[0] == 4 and cache.lookup([0] * 5, 4)[0] == 0  # least recently used went
    assert StateCache(CHUNK, "t", 0).lookup([1] * 5, 4)[0] == 0  # 0 bytes: nothing is kept


def test_the_disk_tier_survives_a_restart_and_skips_foreign_and_corrupt_files(tmp_path, caplog):
    tokens = list(range(16))
    first = StateCache(CHUNK, "model-a", 1 << 20, tmp_path)
    put(first, tokens[:8], 2.0)
    put(first, tokens[:12], 3.0)
    assert first.stats.disk_writes == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    restarted = StateCache(CHUNK, "model-a", 1 << 20, tmp_path)
    n, found = restarted.lookup(tokens, 15)
    assert n == 12 and torch.equal(found.wkv_num, state(3.0).wkv_num) and restarted.stats.disk_hits == 1
    # another model never reads model-a's files, and says so once
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        other = StateCache(CHUNK, "model-b", 1 << 20, tmp_path)
    assert other.lookup(tokens, 15) == (0, None)
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        f"state cache: skipped 2 file(s) in {tmp_path}: 2 of another model or prefill layout, 0 unreadable"
    ]
    # a file corrupted after the scan is skipped, with one warning, and the lookup falls back to a shorter prefix
    caplog.clear()
    scanned = StateCache(CHUNK, "model-a", 1 << 20, tmp_path)
    longest = tmp_path / f"{first.keys(tokens)[2]}.safetensors"
    longest.write_bytes(longest.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        assert scanned.lookup(tokens, 15)[0] == 8
        assert scanned.lookup(tokens, 15)[0] == 8  # in memory now; the broken file is not read again
        StateCache(CHUNK, "model-a", 1 << 20, tmp_path).lookup(tokens, 15)  # the next start's scan: one warning
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "skipping" in warnings[0] and "1 unreadable" in warnings[1]


def test_the_directory_stays_within_its_bound(tmp_path):
    cache = StateCache(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=1 << 20)
    put(cache, [1, 2, 3, 4], 1.0)
    size = next(tmp_path.glob("*.safetensors")).stat().st_size
    bounded = StateCache(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=5 * size)
    for i in range(20):
        put(bounded, [i, 0, 0, 0], float(i))
        assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= 5 * size
    assert bounded.stats.disk_evictions >= 15
    assert StateCache(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=5 * size).lookup([19, 0, 0, 0, 1], 4)[0] == 4


def test_fingerprints_tell_models_apart():
    a = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed=1)
    b = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed=1)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.head.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    c = lively_weights_(SpikeGPTForCausalLM(tiny_config(lif_threshold=0.9)), seed=1)
    assert model_fingerprint(a) != model_fingerprint(c)


def test_entries_sit_at_chunk_boundaries():
    with pytest.raises(ValueError, match="multiples of 4"):
        StateCache(CHUNK, "t", 1 << 20).store([1, 2, 3], "k", state(0))
