"""The engine with the prefix-state cache: a hit gives the same logits, text and log-probabilities, to the bit, as
an engine without cache; the next turn of a conversation hits; states on disk survive a restart; chunked prefill
keeps a seeded request's output the same alone and under load; spike statistics cover what was computed."""

from __future__ import annotations

import pytest
import torch

from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import BACKGROUND_AFTER_IDLE_S, Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.sampling import SamplingParams

CHUNK, STRIDE, BATCH = 8, 16, 4


class RecordingEngine(Engine):
    """An engine that also keeps the logits each sequence sampled from (a copy, after the step computed them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampled_logits: dict[str, list[torch.Tensor]] = {}

    def submit(self, request):
        self.sampled_logits.pop(request.request_id, None)
        super().submit(request)

    def _sample(self, ready, events):
        for seq in ready:
            self.sampled_logits.setdefault(seq.request.request_id, []).append(self.runner.logits[seq.slot].clone())
        super()._sample(ready, events)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


class Clock:
    """The engine's clock, moved by the test: time passes only when the test says so (no sleeping)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engine(tiny, cache_bytes: int = 1 << 24, **kwargs) -> RecordingEngine:
    model, tokenizer = tiny
    kwargs.setdefault("max_batch", BATCH)
    config = EngineConfig(
        prefill_chunk=CHUNK, prefill_rows=3, state_cache_bytes=cache_bytes, cache_stride=STRIDE, **kwargs
    )
    return RecordingEngine(model, tokenizer, config, clock=Clock())


def run(eng: Engine, requests: list[GenerationRequest]) -> dict:
    """Submit the requests together and drive the engine until it has nothing left (background work included)."""
    out = {r.request_id: {"text": "", "logprobs": [], "tokens": []} for r in requests}
    for events in generate(eng, requests):
        for event in events:
            record = out[event.request_id]
            record["text"] += event.text
            if event.token is not None:
                record["tokens"].append(event.token.token_id)
                record["logprobs"].append((event.token.logprob, event.token.top_logprobs))
            if event.prompt_logprobs is not None:
                record["prompt_logprobs"] = event.prompt_logprobs
            if event.finish_reason is not None:
                record.update(finish=event.finish_reason, cached=event.cached_tokens, stats=event.stats)
                record["completion"] = event.completion_tokens
    return out


def request(name: str, ids: list[int], seed: int = 3, max_tokens: int = 12, **params) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=max_tokens, seed=seed, ignore_eos=True, logprobs=5, **params)
    return GenerationRequest(name, ids, sampling)


def same(a: dict, b: dict, eng_a: RecordingEngine, eng_b: RecordingEngine, name_a: str, name_b: str) -> bool:
    logits_a, logits_b = eng_a.sampled_logits[name_a], eng_b.sampled_logits[name_b]
    return (
        a["text"] == b["text"]
        and a["logprobs"] == b["logprobs"]
        and len(logits_a) == len(logits_b)
        and all(torch.equal(x, y) for x, y in zip(logits_a, logits_b, strict=True))
    )


def prompt(n: int, offset: int = 0, vocab: int = 70) -> list[int]:
    return [(7 * i + 3 + offset) % vocab for i in range(n)]


@pytest.fixture(scope="module")
def cold(tiny) -> RecordingEngine:
    """The reference: no cache (its results depend on nothing run before)."""
    return engine(tiny, cache_bytes=0)


SPLITS = [(16, 21), (16, 16), (32, 47), (40, 64), (47, 48), (5, 30), (0, 9)]


def test_a_hit_is_the_same_bits_as_no_cache(tiny, cold):
    """Over prefix lengths and splits (shared tokens, prompt length): the hit's logits, text and logprobs equal
    the cold engine's, and the spike statistics cover what was computed."""
    warm = engine(tiny)
    for case, (shared, length) in enumerate(SPLITS):
        full = prompt(length, offset=10 * case)
        first = full[:shared] + prompt(length, offset=10 * case + 1)[shared:]  # shares exactly `shared` tokens
        name = f"full{case}"
        reference = run(cold, [request(name, full)])[name]
        run(warm, [request(f"first{case}", first[: max(shared + 3, length)])])
        hit = run(warm, [request(name, full)])[name]
        expected = min(shared, length - 1) // STRIDE * STRIDE  # a stride point inside both prompts
        assert expected <= hit["cached"] < length and hit["cached"] % CHUNK == 0, (shared, length)
        assert reference["cached"] == 0
        assert same(hit, reference, warm, cold, name, name), (shared, length)
        # honest accounting: the spikes of what was computed: prompt tokens not restored, then each decoding step
        assert int(hit["stats"].tokens) == length - hit["cached"] + hit["completion"] - 1
        assert int(reference["stats"].tokens) == length + reference["completion"] - 1


def test_the_next_turn_of_a_conversation_hits_at_the_end_of_the_last(tiny, cold):
    turn1 = prompt(27, offset=100)
    warm = engine(tiny)
    first = run(warm, [request("t1", turn1, max_tokens=20)])["t1"]
    assert first == {**run(cold, [request("t1", turn1, max_tokens=20)])["t1"], "stats": first["stats"]}
    turn2 = turn1 + first["tokens"] + prompt(9, offset=5)
    # arriving at once, the next turn waits for the end of turn 1 to be read again by chunks
    hit = run(warm, [request("t2", turn2)])["t2"]
    end = (27 + 20) // CHUNK * CHUNK
    assert hit["cached"] == end
    assert same(hit, run(cold, [request("t2", turn2)])["t2"], warm, cold, "t2", "t2")
    # arriving later, it finds it done: the engine read it in the background once idle
    later = turn2 + hit["tokens"] + prompt(5, offset=6)
    assert warm.has_background and not warm.has_work()  # idle for no time yet: background work waits
    warm.clock.now += BACKGROUND_AFTER_IDLE_S
    for _ in generate(warm, []):  # background work only
        pass
    assert not warm.has_background
    keys = warm.cache.keys(later)
    assert warm.cache.longest(later, len(later) - 1, keys) == (len(turn2) + 12) // CHUNK * CHUNK


def test_prompt_logprobs_are_computed_and_equal_with_the_cache_on(tiny, cold):
    ids = prompt(37, offset=200)
    warm = engine(tiny)
    run(warm, [request("seed", ids)])  # the prefix is cached, but prompt logprobs need every position
    want = GenerationRequest("p", ids, SamplingParams(max_tokens=3, seed=1, logprobs=2), prompt_logprobs=2)
    a, b = run(warm, [want])["p"], run(cold, [want])["p"]
    assert a["cached"] == 0 and len(a["prompt_logprobs"]) == len(ids)
    assert a["prompt_logprobs"] == b["prompt_logprobs"] and a["text"] == b["text"]
    assert [c.token_id for c in a["prompt_logprobs"][1:]] == ids[1:]


def test_chunked_prefill_is_batch_invariant_under_load(tiny, cold):
    mine = request("mine", prompt(45, offset=300), seed=9, max_tokens=16, temperature=0.9)
    alone_engine = cold
    alone = run(alone_engine, [mine])["mine"]
    loaded_engine = engine(tiny, cache_bytes=0)
    others = [request(f"o{i}", prompt(n, offset=i), seed=i) for i, n in enumerate((70, 3, 19, 33, 8, 52))]
    busy = run(loaded_engine, [*others[:3], mine, *others[3:]])
    assert same(alone, busy["mine"], alone_engine, loaded_engine, "mine", "mine")
    assert all(busy[o.request_id]["finish"] == "length" for o in others)


def test_states_on_disk_survive_a_restart_and_stay_exact(tiny, cold, tmp_path):
    ids = prompt(50, offset=400)
    first = engine(tiny, state_cache_dir=str(tmp_path))
    run(first, [request("a", ids)])
    restarted = engine(tiny, state_cache_dir=str(tmp_path))
    assert restarted.cache.stats.disk_entries > 0
    again = run(restarted, [request("a", ids)])["a"]
    assert again["cached"] == 48 and restarted.cache.stats.disk_hits == 1
    assert same(again, run(cold, [request("a", ids)])["a"], restarted, cold, "a", "a")


def test_another_models_states_are_never_used(tiny, tmp_path, tiny_model_dir):
    _, tokenizer = tiny
    ids = prompt(40)
    run(engine(tiny, state_cache_dir=str(tmp_path)), [request("a", ids)])
    other, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        other.head.weight.mul_(1.5)
    config = EngineConfig(
        max_batch=BATCH,
        prefill_chunk=CHUNK,
        prefill_rows=3,
        state_cache_bytes=1 << 24,
        cache_stride=STRIDE,
        state_cache_dir=str(tmp_path),
    )
    foreign = RecordingEngine(other, tokenizer, config)
    assert foreign.cache.stats.disk_entries == 0 and foreign.cache.stats.disk_skipped > 0
    assert run(foreign, [request("a", ids)])["a"]["cached"] == 0


def test_the_memory_bound_holds_under_many_prefixes(tiny):
    model, _ = tiny
    entry = sum(t.nbytes for t in model.fresh_state(1).tensors()) + STRIDE * 4
    eng = engine(tiny, cache_bytes=5 * entry)
    run(eng, [request(f"r{i}", prompt(17, offset=i), max_tokens=2) for i in range(12)])
    assert 0 < eng.cache.stats.bytes <= 5 * entry and eng.cache.stats.evictions > 0
