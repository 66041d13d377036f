"""Helpers of the serving tests: a real server (uvicorn in a thread, on a free 127.0.0.1 port, serving a saved
model; ``spikegpt serve`` in a subprocess is ``spikegpt.serve.testing.ServerProcess``, which the benchmarks use
too) and ways to talk to it over real HTTP."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from spikegpt.serve.app import create_app
from spikegpt.serve.host import load_checkpoint
from spikegpt.serve.settings import ServeSettings

TIMEOUT = httpx.Timeout(30.0)


@dataclass
class RunningServer:
    url: str
    app: object
    server: uvicorn.Server

    @property
    def host(self):
        return self.app.state.host

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def run_server(settings: ServeSettings, loader=load_checkpoint, wait_ready: bool = True) -> Iterator[RunningServer]:
    """Start uvicorn with the app in a thread; stop it (and check it stopped) on exit."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    app = create_app(settings, loader=loader)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(f"http://127.0.0.1:{port}", app, server)
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        if wait_ready:
            wait_until_ready(running)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_until_ready(server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)


def tiny_settings(model_dir: Path, **overrides) -> ServeSettings:
    # threads: as the test process already has them, so that starting a server changes nothing for other tests
    fields = dict(
        model=str(model_dir), max_batch=4, max_queue=8, max_tokens_cap=100_000, threads=torch.get_num_threads()
    )
    fields.update(overrides)
    return ServeSettings(**fields)


def sse_events(response: httpx.Response) -> list:
    """The payloads of a server-sent-event stream in order (JSON objects, and the final "[DONE]")."""
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream_post(client: httpx.Client, path: str, body: dict) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def completion_text(events: list) -> str:
    return "".join(c["text"] for e in events if isinstance(e, dict) for c in e.get("choices", []))


def metric_values(client: httpx.Client) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted labels...): value}."""
    text = client.get("/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return values


def figures_by_hand(client: httpx.Client, model: str, prompt: str, continuation: str, sampling: dict) -> dict:
    """The compare table's figures of ``model``, worked out here from the requests a user would send: the seeded
    completion (its text, tokens and "energy" field), and the prompt with the continuation echoed with its
    log-probabilities (the continuation's tokens are the last), for bits per byte of the continuation."""
    run = client.post("/v1/completions", json={"model": model, "prompt": prompt, **sampling}).json()
    scoring = {"model": model, "prompt": prompt + continuation, "echo": True, "logprobs": 0, "max_tokens": 0}
    scored = client.post("/v1/completions", json=scoring).json()
    tokens = client.post("/tokenize", json={"model": model, "prompt": continuation}).json()["count"]
    logprobs = scored["choices"][0]["logprobs"]["token_logprobs"][-tokens:]
    energy = run["energy"]
    figures = {"tokens": run["usage"]["completion_tokens"]}
    for rule in ("strict", "paper", "event"):
        figures[f"energy_per_token.{rule}"] = energy["rules"][rule]["total_j_per_generated_token"]
    figures["firing_rate"] = energy["firing_rate"]
    figures["input_zero_fraction"] = energy["input_zero_fraction"]
    figures["bits_per_byte"] = -sum(logprobs) / math.log(2) / len(continuation.encode())
    return {"text": run["choices"][0]["text"], "energy": energy, "figures": figures}
