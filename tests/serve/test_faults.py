"""A failure inside one request never stops the engine worker or harms the other requests.

Failures are injected into the real engine (a prefill call reading a poisoned character fails; a flag makes the
next decoding step fail) and into the engine's step itself.
"""

from __future__ import annotations

import threading

import pytest
from serve_helpers import run_server, sse_events, tiny_settings

POISON = "é"


@pytest.fixture
def faulty(tiny_model_dir):
    with run_server(tiny_settings(tiny_model_dir)) as server:
        engine = server.host.worker.engine
        poison = server.host.tokenizer.convert_tokens_to_ids(POISON)
        original_chunk, original_step = engine.prefiller.run_chunk, engine.decode_step
        fail_next_decode = threading.Event()

        def run_chunk(tasks):
            if any(poison in t.tokens[t.position : t.position + engine.prefill_chunk] for t in tasks):
                raise RuntimeError("injected prefill failure")
            return original_chunk(tasks)

        def decode_step(tokens, state):
            if fail_next_decode.is_set():
                fail_next_decode.clear()
                raise RuntimeError("injected decoding failure")
            return original_step(tokens, state)

        engine.prefiller.run_chunk = run_chunk
        engine.decode_step = decode_step
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
        assert '"error"' in rest[-2] and "injected decoding failure" in rest[-2]
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
