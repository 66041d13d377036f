"""The prefix-state cache on its own: keys, verification, the memory bound, and the disk tier across restarts
(another model's files and corrupted files skipped with one warning; the directory's size bounded; states read as
owned copies; only regular files of bounded size opened; bad states refused once and replaced; NaN never kept)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import lively_weights_, tiny_config, watched_fifo
from safetensors import safe_open
from safetensors.torch import load, save_file

from spikegpt import SpikeGPTForCausalLM
from spikegpt.modeling.state import RecurrentState
from spikegpt.runtime.state_cache import StateCache, model_fingerprint

CHUNK = 4
OVERSIZED = 64 << 20  # bytes: far more than a state file of TEMPLATE's shape and a prefix of any length kept


TEMPLATE = RecurrentState.fresh(1, 2, 8)


def state(value: float) -> RecurrentState:
    return RecurrentState(*(torch.full_like(t, value) for t in TEMPLATE.tensors()))


def cache_of(*args, **kwargs) -> StateCache:
    """A cache of states shaped as ``TEMPLATE``'s."""
    return StateCache(*args, template=TEMPLATE, **kwargs)


def put(cache: StateCache, tokens: list[int], value: float) -> None:
    cache.store(tokens, cache.keys(tokens)[-1], state(value))


def test_longest_verified_prefix_within_the_limit():
    cache = cache_of(CHUNK, "t", 1 << 20)
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
    cache = cache_of(CHUNK, "t", 1 << 20)
    cache.store([1, 2, 3, 4], cache.keys([5, 6, 7, 8])[0], state(1.0))  # stored under another prefix's key
    assert cache.lookup([5, 6, 7, 8, 9], 4) == (0, None)


def test_memory_stays_within_its_bound_under_many_prefixes():
    one = sum(t.nbytes for t in state(0).tensors()) + CHUNK * 4
    cache = cache_of(CHUNK, "t", 10 * one)
    for i in range(100):
        put(cache, [i, i, i, i], float(i))
        assert cache.stats.bytes <= 10 * one
    assert cache.stats.entries == 10 and cache.stats.evictions == 90
    assert cache.lookup([99] * 5, 4)[0] == 4 and cache.lookup([0] * 5, 4)[0] == 0  # least recently used went
    assert cache_of(CHUNK, "t", 0).lookup([1] * 5, 4)[0] == 0  # 0 bytes: nothing is kept


def test_the_disk_tier_survives_a_restart_and_skips_foreign_and_corrupt_files(tmp_path, caplog):
    tokens = list(range(16))
    first = cache_of(CHUNK, "model-a", 1 << 20, tmp_path)
    put(first, tokens[:8], 2.0)
    put(first, tokens[:12], 3.0)
    assert first.stats.disk_writes == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    restarted = cache_of(CHUNK, "model-a", 1 << 20, tmp_path)
    n, found = restarted.lookup(tokens, 15)
    assert n == 12 and torch.equal(found.wkv_num, state(3.0).wkv_num) and restarted.stats.disk_hits == 1
    # another model never reads model-a's files, and says so once
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        other = cache_of(CHUNK, "model-b", 1 << 20, tmp_path)
    assert other.lookup(tokens, 15) == (0, None)
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        f"state cache: skipped 2 file(s) in {tmp_path}: 2 of another model or prefill layout"
    ]
    # a file corrupted after the scan is refused, with one warning, and the lookup falls back to a shorter prefix
    caplog.clear()
    scanned = cache_of(CHUNK, "model-a", 1 << 20, tmp_path)
    longest = tmp_path / f"{first.keys(tokens)[2]}.safetensors"
    longest.write_bytes(longest.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        assert scanned.lookup(tokens, 15)[0] == 8
        assert scanned.lookup(tokens, 15)[0] == 8  # in memory now; the broken file is not read again
        cache_of(CHUNK, "model-a", 1 << 20, tmp_path).lookup(tokens, 15)  # it was removed: the next start is quiet
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refusing" in warnings[0] and longest.name in warnings[0]
    assert not longest.exists()


def test_the_directory_stays_within_its_bound(tmp_path):
    cache = cache_of(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=1 << 20)
    put(cache, [1, 2, 3, 4], 1.0)
    size = next(tmp_path.glob("*.safetensors")).stat().st_size
    bounded = cache_of(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=5 * size)
    for i in range(20):
        put(bounded, [i, 0, 0, 0], float(i))
        assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= 5 * size
    assert bounded.stats.disk_evictions >= 15
    assert cache_of(CHUNK, "t", 1 << 20, tmp_path, max_disk_bytes=5 * size).lookup([19, 0, 0, 0, 1], 4)[0] == 4


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
        cache_of(CHUNK, "t", 1 << 20).store([1, 2, 3], "k", state(0))


def entry_file(cache: StateCache, tokens: list[int]) -> Path:
    return cache.disk.directory / f"{cache.keys(tokens)[-1]}.safetensors"


def test_states_read_from_disk_are_owned_copies_not_views_of_their_files(tmp_path):
    """What a lookup read stays the same when its file is rewritten in place or truncated (reading a mapped file
    past its new end is a SIGBUS, so this test only rewrites in place, then checks no mapping is left)."""
    tokens = list(range(8))
    put(cache_of(CHUNK, "t", 1 << 20, tmp_path), tokens, 2.0)
    restarted = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    assert restarted.lookup([*tokens, 9], 8)[0] == 8 and restarted.stats.disk_hits == 1
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(tmp_path) not in maps.read_text()
    path = entry_file(restarted, tokens)
    with path.open("r+b") as f:  # as cp or rsync --inplace rewrite it
        f.write(bytes(path.stat().st_size))
    n, found = restarted.lookup([*tokens, 9], 8)  # from memory
    assert n == 8 and all(torch.equal(a, b) for a, b in zip(found.tensors(), state(2.0).tensors(), strict=True))


def test_a_state_larger_than_any_state_of_the_model_is_never_read(tmp_path, caplog):
    tokens = list(range(8))
    put(cache_of(CHUNK, "t", 1 << 20, tmp_path), tokens, 2.0)
    path = next(tmp_path.glob("*.safetensors"))
    scanned = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    with path.open("r+b") as f:  # grown after the scan: the bound holds at every read
        f.truncate(OVERSIZED)
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        assert scanned.lookup([*tokens, 9], 8) == (0, None)
    assert len(caplog.records) == 1
    assert re.fullmatch(
        f"state cache: refusing {path} \\(a miss; the file is removed\\): "
        "larger than the [0-9]+ bytes a state file of this model may take",
        caplog.records[0].message,
    )


def test_the_scan_opens_regular_files_of_bounded_size_only(tmp_path, caplog):
    tokens = list(range(16))
    first = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    put(first, tokens[:8], 1.0)
    put(first, tokens[:12], 2.0)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    (tmp_path / "loop.safetensors").symlink_to("loop.safetensors")
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    (tmp_path / "folder.safetensors").mkdir()
    linked = entry_file(first, tokens[:12])  # an entry's file moved out and linked back: never followed
    linked.symlink_to(shutil.move(linked, tmp_path / "elsewhere"))
    oversized = tmp_path / f"{'0' * 32}.safetensors"
    oversized.write_bytes(entry_file(first, tokens[:8]).read_bytes())
    with oversized.open("r+b") as f:
        f.truncate(OVERSIZED)
    with watched_fifo(fifo) as released, caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        scanned = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    assert not released, "the scan opened the FIFO"
    assert len(caplog.records) == 1
    assert re.fullmatch(
        f"state cache: skipped 6 file\\(s\\) in {tmp_path}: 1 larger than [0-9]+ bytes, 5 not regular files",
        caplog.records[0].message,
    )
    assert scanned.stats.disk_entries == 1 and scanned.stats.disk_skipped == 6
    assert scanned.lookup(tokens, 15)[0] == 8


def wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["wkv_num"] = torch.zeros(2, 9)


def broadcasting_shape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["att_shift"] = tensors["att_shift"][:1].clone()


def wrong_dtype(tensors: dict[str, torch.Tensor]) -> None:
    tensors["att_v"] = tensors["att_v"].double()


def nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors["wkv_num"][0, 0] = float("nan")


def inf(tensors: dict[str, torch.Tensor]) -> None:
    tensors["ffn_v"][1, 3] = float("-inf")


def foreign_tokens(tensors: dict[str, torch.Tensor]) -> None:
    tensors["tokens"] = tensors["tokens"] + 1


def missing_field(tensors: dict[str, torch.Tensor]) -> None:
    del tensors["input_v"]


@pytest.mark.parametrize(
    "fault, reason",
    [
        (wrong_shape, "wkv_num is torch.float32 [1, 2, 9], the model's is torch.float32 [1, 2, 8]"),
        (broadcasting_shape, "att_shift is torch.float32 [1, 1, 8], the model's is torch.float32 [1, 2, 8]"),
        (wrong_dtype, "att_v is torch.float64 [1, 2, 8], the model's is torch.float32 [1, 2, 8]"),
        (nan, "NaN or inf in wkv_num"),
        (inf, "NaN or inf in ffn_v"),
        (foreign_tokens, "its tokens are not the prefix its name stands for"),
        (missing_field, "tensors ["),
    ],
)
def test_a_bad_state_is_a_miss_with_one_warning_and_the_correct_state_replaces_it(tmp_path, caplog, fault, reason):
    tokens = list(range(12))
    first = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    put(first, tokens[:4], 1.0)
    put(first, tokens[:8], 2.0)
    path = entry_file(first, tokens[:8])
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = {name: t.clone() for name, t in load(path.read_bytes()).items()}
    fault(tensors)
    save_file(tensors, str(path), metadata=metadata)
    scanned = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        assert scanned.lookup(tokens, 11)[0] == 4  # the shorter prefix
        assert scanned.lookup(tokens, 11)[0] == 4  # the bad file is not read again
    assert [r.message for r in caplog.records] == [caplog.records[0].message]
    assert str(path) in caplog.records[0].message and reason in caplog.records[0].message
    assert not path.exists() and scanned.stats.disk_skipped == 1
    put(scanned, tokens[:8], 2.0)  # computed again: written in its place
    n, found = cache_of(CHUNK, "t", 1 << 20, tmp_path).lookup(tokens, 11)
    assert n == 8 and all(torch.equal(a, b) for a, b in zip(found.tensors(), state(2.0).tensors(), strict=True))


def test_states_with_nan_or_inf_are_never_kept(tmp_path, caplog):
    cache = cache_of(CHUNK, "t", 1 << 20, tmp_path)
    with caplog.at_level(logging.WARNING, logger="spikegpt.runtime.state_cache"):
        put(cache, [1, 2, 3, 4], float("nan"))
        put(cache, [5, 6, 7, 8], float("inf"))
    assert cache.lookup([1, 2, 3, 4, 5], 4) == (0, None) and cache.lookup([5, 6, 7, 8, 9], 4) == (0, None)
    assert (cache.stats.stored, cache.stats.entries, cache.stats.disk_writes) == (0, 0, 0)
    assert not list(tmp_path.glob("*.safetensors"))
    assert [r.message for r in caplog.records] == [
        "state cache: not keeping a state with NaN or inf in att_shift, ffn_shift, wkv_num, wkv_den, wkv_max, "
        "att_v, ffn_v (nor any other such state)"
    ]
