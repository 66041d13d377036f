"""The serving core without HTTP: the batched sampler's filters and seeds, and the engine's slots and aborts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from spikegpt.errors import ConfigError, DecodeModeError
from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.sampling import BatchSampler, SamplingParams
from spikegpt.serve.settings import ServeSettings, SettingsError

VOCAB = 12


def logits(rows: int = 4) -> torch.Tensor:
    """Every row the same distribution with a clear order: token i has logit i / 2."""
    return (torch.arange(VOCAB, dtype=torch.float32) / 2).repeat(rows, 1)


def draws(params: SamplingParams, neighbours: SamplingParams, n: int = 200, row: int = 1) -> list[int]:
    """n tokens of ``row`` sampled under ``params`` while every other row uses ``neighbours``."""
    sampler = BatchSampler(4, VOCAB, "cpu")
    for r in range(4):
        sampler.start(r, params if r == row else neighbours, [])
    return [sampler.sample(logits(), [0, 1, 2, 3])[1][row].token_id for _ in range(n)]


def test_greedy_takes_the_most_likely_token():
    assert set(draws(SamplingParams(temperature=0), SamplingParams(seed=1))) == {VOCAB - 1}


def test_a_temperature_or_top_p_too_small_for_float32_is_greedy():
    """1e-300 is 0 in the sampler's float32 rows: it must not divide by it or drop every token."""
    for params in (
        SamplingParams(temperature=1e-300, seed=1),
        SamplingParams(temperature=1e-39, seed=1),
        SamplingParams(top_p=1e-46, seed=1),
        SamplingParams(top_p=1e-300, min_p=0.5, top_k=3, seed=1),
    ):
        assert params.greedy
        assert set(draws(params, SamplingParams(seed=2), n=20)) == {VOCAB - 1}


def test_top_k_top_p_and_min_p_keep_only_the_likely_tokens():
    assert set(draws(SamplingParams(top_k=3, seed=2), SamplingParams(seed=1))) == {9, 10, 11}
    # probabilities of the top tokens: 0.39, 0.24, 0.15, 0.09 ...: top_p keeps up to the token that crosses it
    assert set(draws(SamplingParams(top_p=0.6, seed=3), SamplingParams(seed=1))) == {10, 11}
    assert set(draws(SamplingParams(top_p=0.7, seed=3), SamplingParams(seed=1))) == {9, 10, 11}
    # min_p: tokens at least min_p times as likely as the best (e^-0.5 = 0.61, e^-1 = 0.37, e^-1.5 = 0.22 ...)
    assert set(draws(SamplingParams(min_p=0.5, seed=4), SamplingParams(seed=1))) == {10, 11}
    assert set(draws(SamplingParams(min_p=0.3, seed=4), SamplingParams(seed=1))) == {9, 10, 11}


def test_a_row_does_not_depend_on_its_neighbours():
    mine = SamplingParams(temperature=0.9, top_p=0.95, seed=7)
    alone = draws(mine, SamplingParams(temperature=0))
    busy = draws(mine, SamplingParams(temperature=1.7, top_k=2, min_p=0.1, repetition_penalty=2.0, seed=3))
    assert alone == busy


def test_same_seed_same_draws_and_full_distribution_is_used():
    a = draws(SamplingParams(seed=5), SamplingParams(seed=1), n=500)
    assert a == draws(SamplingParams(seed=5), SamplingParams(seed=2), n=500)
    assert a != draws(SamplingParams(seed=6), SamplingParams(seed=1), n=500)
    assert len(set(a)) >= 8  # temperature 1 without filters reaches unlikely tokens too


def test_penalties_push_away_from_repeated_tokens():
    sampler = BatchSampler(1, VOCAB, "cpu")
    sampler.start(0, SamplingParams(temperature=0, repetition_penalty=10.0), [VOCAB - 1])
    assert sampler.sample(logits(1), [0])[1][0].token_id == VOCAB - 2  # the prompt's token is penalised
    sampler.start(0, SamplingParams(temperature=0, frequency_penalty=2.0), [])
    tokens = [sampler.sample(logits(1), [0])[1][0].token_id for _ in range(3)]
    assert tokens[0] == VOCAB - 1 and tokens[1] != VOCAB - 1  # once said, the best token drops by 2


def test_logprobs_are_of_the_raw_distribution():
    sampler = BatchSampler(2, VOCAB, "cpu")
    sampler.start(0, SamplingParams(temperature=0, logprobs=2), [])
    sampler.start(1, SamplingParams(temperature=0), [])
    _, (with_logprobs, without) = sampler.sample(logits(2), [0, 1])
    expected = torch.log_softmax(logits(1)[0], dim=-1)
    assert with_logprobs.logprob == float(expected[VOCAB - 1])
    assert [t for t, _ in with_logprobs.top_logprobs] == [VOCAB - 1, VOCAB - 2]
    assert without.logprob is None and without.top_logprobs == []


def run(engine: Engine, requests: list[GenerationRequest], abort_after: dict[str, int] | None = None) -> dict:
    """Drive the engine to the end; returns each request's (text, finish reason)."""
    out = {r.request_id: ["", None] for r in requests}
    for steps, events in enumerate(generate(engine, requests), start=1):
        for event in events:
            out[event.request_id][0] += event.text
            if event.finish_reason:
                out[event.request_id][1] = event.finish_reason
        for request_id, at in (abort_after or {}).items():
            if steps == at:
                engine.abort(request_id)
    return {k: tuple(v) for k, v in out.items()}


def test_engine_aborts_queued_and_running_requests_and_reuses_slots(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=1))
    params = SamplingParams(max_tokens=50, ignore_eos=True, seed=1)
    ids = tokenizer.encode("Hello")
    requests = [GenerationRequest(name, ids, params) for name in ("running", "queued", "after")]
    result = run(engine, requests, abort_after={"running": 3, "queued": 1})
    assert result["running"][1] == "abort" and result["queued"] == ("", "abort")
    assert result["after"][1] == "length"
    # a fresh state per request: the request served after others equals the same request served first
    assert run(Engine(model, tokenizer, EngineConfig(max_batch=1)), [requests[2]])["after"] == result["after"]


def test_the_traced_decoding_step_is_the_models_forward_bit_for_bit(tiny_model_dir, seed):
    """The engine's default CPU step is recorded with torch.jit.trace; it must run exactly the model's forward."""
    from spikegpt.runtime.step import trace_decode_step

    model, _ = load_model(tiny_model_dir)
    batch = 4
    state = model(torch.randint(0, model.config.vocab_size, (batch, 9)), use_cache=True).state
    tokens = torch.randint(0, model.config.vocab_size, (batch, 1))
    step = trace_decode_step(model, tokens, model.fresh_state(batch))
    with torch.inference_mode():
        for _ in range(5):
            logits, traced_state, (counts, reads) = step(tokens, state)
            out = model(tokens, state=state, output_spike_stats=True)
            assert torch.equal(logits, out.logits[:, -1]) and torch.equal(counts, out.spike_stats.counts)
            assert torch.equal(reads, out.spike_stats.reads)
            for ours, theirs in zip(traced_state.tensors(), out.state.tensors(), strict=True):
                assert torch.equal(ours, theirs)
            state, tokens = out.state, logits.argmax(-1, keepdim=True)


def test_engine_counts_the_logits_it_computes_and_keeps_counts_whole(tiny_model_dir):
    """head_tokens: the last position of a chunked prefill, every prompt position when prompt logprobs are asked
    for, and one per decoding step (including the steps that feed a prompt's tail shorter than a chunk); the
    counters are int64 (issue 9, item 6)."""
    model, tokenizer = load_model(tiny_model_dir)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=2, prefill_chunk=4))
    ids = tokenizer.encode("Hello there")  # 11 tokens: two prefill chunks of 4, then 3 fed by decoding steps
    params = SamplingParams(max_tokens=5, ignore_eos=True, seed=1)
    finals = {}
    requests = [GenerationRequest("chunked", ids, params), GenerationRequest("scored", ids, params, 2)]
    for events in generate(engine, requests):
        finals.update({e.request_id: e for e in events if e.finish_reason})
    chunked, scored = finals["chunked"].stats, finals["scored"].stats
    assert chunked.counts.dtype == chunked.reads.dtype == chunked.head_tokens.dtype == torch.long
    # the prefill's last position, the 3 fed tokens' steps (the last one's logits give the first sampled token),
    # then 4 more decoding steps
    assert chunked.head_tokens.tolist() == [1 + 3 + 4]
    assert scored.head_tokens.tolist() == [11 + 4]
    assert chunked.tokens.tolist() == scored.tokens.tolist() == [11 + 4]
    assert torch.equal(chunked.reads, scored.reads)  # what the products read does not depend on the chunking


def test_a_stop_string_that_never_matches_changes_nothing(tiny_model_dir):
    """Text held back for a possible stop string is released however the sequence ends (EOS, a stop token,
    length): over many seeds, stop strings that never match (their last character is not in the vocabulary) give
    the very text generated without them."""
    model, tokenizer = load_model(tiny_model_dir)
    ids = tokenizer.encode("Hello")
    never = tuple(f"{c}\x00" for c in "eat ")  # each holds back a trailing e, a, t or space
    stop_token = tokenizer.convert_tokens_to_ids("o")  # ends many sequences early, right after held-back text
    seeds = range(32)
    requests = []
    for seed in seeds:
        params = SamplingParams(max_tokens=16, seed=seed, stop_token_ids=(stop_token,))
        requests.append(GenerationRequest(f"plain-{seed}", ids, params))
        requests.append(GenerationRequest(f"stops-{seed}", ids, replace(params, stop=never)))
    result = run(Engine(model, tokenizer, EngineConfig(max_batch=16)), requests)
    plain = {seed: result[f"plain-{seed}"] for seed in seeds}
    for seed in seeds:
        assert result[f"stops-{seed}"] == plain[seed], seed
    reasons = {finish for _, finish in plain.values()}
    assert "stop" in reasons  # some sequences did end on EOS or the stop token
    # and the case that lost text before: a sequence ending on EOS or the stop token right after a held-back char
    assert any(t and t[-1] in "eat " and f == "stop" for t, f in plain.values())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_batch": 0}, ConfigError, "max_batch must be at least 1"),
        ({"prefill_chunk": 0}, ConfigError, "prefill_chunk must be at least 1"),
        ({"compile": True, "batch_invariant": False}, ConfigError, "compile needs batch_invariant"),
        ({"prefill_chunk": 8, "cache_stride": 12}, ConfigError, "multiple of the prefill chunk 8, got 12"),
        ({"decode": "fast"}, DecodeModeError, "decode must be one of auto, dense, sparse"),
    ],
)
def test_engine_options_are_checked_where_they_are_defined(options, error, message):
    """``EngineConfig`` refuses what the engine cannot run; the server's settings refuse it with the same words."""
    with pytest.raises(error, match=message):
        EngineConfig(**options)
    if "cache_stride" not in options:  # (a stride is not a server setting)
        with pytest.raises(SettingsError, match=message):
            ServeSettings(**options)


def test_the_server_and_the_cli_build_the_engines_options():
    settings = ServeSettings(max_batch=3, decode="dense", state_cache_mb=2, prefill_chunk=4)
    assert settings.engine_config() == EngineConfig(
        max_batch=3, decode="dense", state_cache_bytes=2 << 20, prefill_chunk=4, prefill_rows=4
    )
    defaults = ServeSettings().engine_config()
    for name in ("max_batch", "batch_invariant", "prefill_chunk", "compile", "decode"):
        assert getattr(defaults, name) == getattr(EngineConfig(), name), name  # one definition of each default


def test_generate_keeps_at_most_max_in_flight_requests_unfinished(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=4))
    params = SamplingParams(max_tokens=3, ignore_eos=True, seed=1)
    requests = [GenerationRequest(f"r{i}", tokenizer.encode("Hello"), params) for i in range(5)]
    finished, most = [], 0
    for events in generate(engine, requests, max_in_flight=2):
        most = max(most, engine.running + engine.waiting)
        finished += [e.request_id for e in events if e.finish_reason]
    assert most == 2 and sorted(finished) == [r.request_id for r in requests]
    assert not engine.has_work()
