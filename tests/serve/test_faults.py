"""A failure inside one request never stops the engine worker or harms the other requests.

Failures are injected into the real engine (a prefill call reading a poisoned character fails; a flag makes the
next decoding step fail) and into the engine's step itself.
"""

from __future__ import annotations

import json
import threading

import pytest
from serve_helpers import run_server, sse_events, tiny_settings

POISON = "é"


@pytest.fixture
def faulty(tiny_model_dir):
    with run_server(tiny_settings(tiny_model_dir)) as server:
        engine = server.host.worker.engine
        poison = server.host.tokenizer.convert_tokens_to_ids(POISON)
        original_chunk, original_step = engine.prefiller.run_chunk, engine.runner.decode_step
        fail_next_decode = threading.Event()

        def run_chunk(tasks):
            if any(poison in t.tokens[t.position : t.position + engine.config.prefill_chunk] for t in tasks):
                raise RuntimeError("injected prefill failure")
            return original_chunk(tasks)

        def decode_step(tokens, state):
            if fail_next_decode.is_set():
                fail_next_decode.clear()
                raise RuntimeError("injected decoding failure")
            return original_step(tokens, state)

        engine.prefiller.run_chunk = run_chunk
        engine.runner.decode_step = decode_step
        server.fail_next_decode = fail_next_decode
        yield server


def test_a_failing_prefill_fails_only_its_request(faulty):
    with faulty.client() as client, faulty.client() as other:
        body = {"prompt": "Hello", "max_tokens": 200, "ignore_eos": True, "seed": 1, "stream": True}
        with other.stream("POST", "/v1/completions", json=body) as good:
            lines = good.iter_lines()
            next(lines)
            poisoned = f"x{POISON}" + "x" * 20  # the poison in the first prefill chunk
            bad = client.post("/v1/completions", json={"prompt": poisoned, "max_tokens": 5})
            assert bad.status_code == 500
            error = bad.json()["error"]
            assert error["type"] == "server_error" and "Traceback" not in error["message"]
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in rest[-2]
        events = sse_events(client.post("/v1/completions", json={**body, "max_tokens": 5}))
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


def test_a_failing_decoding_step_ends_the_streams_in_it_with_an_error_event(faulty):
    with faulty.client() as client:
        body = {"prompt": "Hello", "max_tokens": 10_000, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            next(lines)
            faulty.fail_next_decode.set()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "injected" not in error["message"]  # details stay in the log
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200


def test_an_exception_escaping_an_engine_step_keeps_the_worker_alive(faulty):
    engine = faulty.host.worker.engine
    original = engine.step
    calls = []

    def step():
        if not calls:
            calls.append(1)
            raise RuntimeError("injected step failure")
        return original()

    engine.step = step
    with faulty.client() as client:
        failed = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
    assert faulty.host.worker.outstanding == 0


def test_a_bug_while_finishing_a_stream_still_ends_it_cleanly(faulty, monkeypatch):
    import spikegpt.serve.generation as generation

    def broken_energy(*args, **kwargs):
        raise ValueError("injected energy failure")

    monkeypatch.setattr(generation, "energy_field", broken_energy)
    with faulty.client() as client:
        body = {"prompt": "Hi", "max_tokens": 5, "stream": True}
        events = sse_events(client.post("/v1/completions", json=body))
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["type"] == "server_error"
        assert "injected" not in events[-2]["error"]["message"]  # internal details stay in the log
        monkeypatch.undo()
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200


# -- one request's failure at each stage of its life, inside the engine ------------------------------------------

MARK = "\x00injected"  # a stop string that marks the request to fail (it never occurs in generated text)


def _fail_if_marked(stop: tuple[str, ...], stage: str) -> None:
    if MARK in stop:
        raise RuntimeError(f"injected {stage} failure")


def inject(engine, stage: str, monkeypatch) -> None:
    """Make the marked request fail at ``stage``, by monkeypatching the in-process engine's parts (the failure a
    real bug would raise there); nothing else changes."""
    from spikegpt.runtime.textstream import TextStream

    if stage == "admit":
        start = engine.sampler.start

        def failing_start(row, params, prompt_ids):
            _fail_if_marked(params.stop, stage)
            start(row, params, prompt_ids)

        monkeypatch.setattr(engine.sampler, "start", failing_start)
    elif stage == "prefill":
        run_chunk = engine.prefiller.run_chunk

        def failing_chunk(tasks):  # the whole call fails; the engine then retries its prompts one by one
            for task in tasks:
                seq = engine._owners.get(task)
                if seq is not None:
                    _fail_if_marked(seq.request.params.stop, stage)
            return run_chunk(tasks)

        monkeypatch.setattr(engine.prefiller, "run_chunk", failing_chunk)
    elif stage == "sample":
        sample, calls = engine.sampler.sample, []

        def failing_sample(logits, rows, uniforms=None):
            calls.append(rows)
            if len(calls) > 3:  # a few tokens in
                for row in rows:
                    _fail_if_marked(engine.sampler.params[row].stop, stage)
            return sample(logits, rows, uniforms)

        monkeypatch.setattr(engine.sampler, "sample", failing_sample)
    else:
        push = TextStream.push

        def failing_push(self, token_id):
            if len(self.text) >= 2:
                _fail_if_marked(self.stop, stage)
            return push(self, token_id)

        monkeypatch.setattr(TextStream, "push", failing_push)


def run_engine(engine, requests) -> dict:
    """Drive the engine to the end; each request's (text, finish reason, error)."""
    from spikegpt.runtime.engine import generate

    out = {r.request_id: ["", None, None] for r in requests}
    for events in generate(engine, requests):
        for event in events:
            out[event.request_id][0] += event.text
            if event.finish_reason:
                out[event.request_id][1:] = [event.finish_reason, event.error]
    return {k: tuple(v) for k, v in out.items()}


def good_request(tokenizer, i: int):
    from spikegpt.runtime.engine import GenerationRequest
    from spikegpt.runtime.sampling import SamplingParams

    return GenerationRequest(
        f"good-{i}", tokenizer.encode("Hello there"), SamplingParams(max_tokens=8, ignore_eos=True, seed=i)
    )


@pytest.fixture(scope="module")
def clean_run(tiny_model_dir):
    """The model, and what three requests give together when nothing fails."""
    from spikegpt.hub.checkpoint import load_model
    from spikegpt.runtime.engine import Engine, EngineConfig

    model, tokenizer = load_model(tiny_model_dir)
    clean = run_engine(
        Engine(model, tokenizer, EngineConfig(max_batch=4)), [good_request(tokenizer, i) for i in range(3)]
    )
    return model, tokenizer, clean


@pytest.mark.parametrize("stage", ["admit", "prefill", "sample", "detokenize"])
def test_a_failure_at_any_stage_ends_only_that_request(clean_run, stage, monkeypatch):
    """Four requests run together; the marked one fails at ``stage`` (injected by monkeypatching the in-process
    engine). It alone ends, with an "error" event naming the stage; the others give exactly the text they give
    without it (the engine is batch-invariant), every slot is free afterwards, and the engine serves on."""
    from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest
    from spikegpt.runtime.sampling import SamplingParams

    model, tokenizer, clean = clean_run
    engine = Engine(model, tokenizer, EngineConfig(max_batch=4))
    inject(engine, stage, monkeypatch)
    params = SamplingParams(max_tokens=8, ignore_eos=True, seed=9, stop=(MARK,))
    bad = GenerationRequest("bad", tokenizer.encode("Hello there"), params)
    goods = [good_request(tokenizer, i) for i in range(3)]
    result = run_engine(engine, [goods[0], bad, *goods[1:]])
    assert result.pop("bad")[1:] == ("error", stage)
    assert result == clean
    assert all(text for text, _, _ in clean.values())
    assert engine.running == 0 and engine.slots == [None] * 4
    assert run_engine(engine, [good_request(tokenizer, 5)])["good-5"][1] == "length"
