"""/health (liveness) and /ready (readiness) while loading, after a failed load and when ready; /metrics counters as
requests come and go."""

from __future__ import annotations

import shutil
import threading
import time

from serve_helpers import metric_values, run_server, tiny_settings, wait_until_ready

from spikegpt.errors import CheckpointError
from spikegpt.serve.host import load_checkpoint

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures


def test_ready_is_503_while_loading_then_200_and_health_200_throughout(tiny_model_dir):
    release = threading.Event()

    def slow_loader(settings):
        assert release.wait(timeout=60)
        return load_checkpoint(settings)

    settings = tiny_settings(tiny_model_dir)
    with run_server(settings, loader=slow_loader, wait_ready=False) as server, server.client() as client:
        loading = client.get("/ready")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        alive = client.get("/health")  # a liveness probe must not restart a server that is still loading
        assert alive.status_code == 200 and alive.json()["status"] == "loading"
        refused = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_loading"
        release.set()
        wait_until_ready(server)
        assert client.get("/ready").json() == {"status": "ready", "model": server.host.model_name}
        assert client.get("/health").status_code == 200
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_health_reports_a_failed_load(tiny_model_dir):
    def broken_loader(settings):
        raise CheckpointError("model.safetensors is truncated")

    settings = tiny_settings(tiny_model_dir)
    with run_server(settings, loader=broken_loader, wait_ready=False) as server, server.client() as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health["status"] == "failed" and "truncated" in health["error"]
        assert client.get("/health").status_code == 503 and client.get("/ready").status_code == 503
        assert client.post("/v1/completions", json={"prompt": "Hi"}).json()["error"]["code"] == "model_failed"


def delta(after: dict, before: dict, *key) -> float:
    return after.get(key, 0) - before.get(key, 0)


def test_metrics_move_with_requests(client):
    before = metric_values(client)
    body = {"prompt": "Hello world", "max_tokens": 5, "ignore_eos": True}
    for _ in range(2):
        assert client.post("/v1/completions", json=body).status_code == 200
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=chat) as response:
        response.read()
    assert client.post("/v1/completions", json={"prompt": 5}).status_code == 400
    after = metric_values(client)

    completions = ("spikegpt:requests_total", ("endpoint", "completions"))
    assert delta(after, before, *completions, ("outcome", "success")) == 2
    assert delta(after, before, *completions, ("outcome", "invalid")) == 1
    assert (
        delta(after, before, "spikegpt:requests_total", ("endpoint", "chat/completions"), ("outcome", "success")) == 1
    )
    assert delta(after, before, "spikegpt:request_success_total", ("finished_reason", "length")) == 3
    assert delta(after, before, "spikegpt:generation_tokens_total") == 5 + 5 + 4
    assert delta(after, before, "spikegpt:prompt_tokens_total") >= 11 + 11
    assert delta(after, before, "spikegpt:time_to_first_token_seconds_count") == 3
    assert delta(after, before, "spikegpt:inter_token_latency_seconds_count") == 4 + 4 + 3
    assert delta(after, before, "spikegpt:e2e_request_latency_seconds_count") == 3
    assert delta(after, before, "spikegpt:firing_rate_count") == 3
    assert 0 < delta(after, before, "spikegpt:firing_rate_sum") < 3
    for rule in ("strict", "paper", "event"):
        assert delta(after, before, "spikegpt:energy_joules_total", ("rule", rule)) > 0
        assert delta(after, before, "spikegpt:energy_data_movement_joules_total", ("rule", rule)) > 0
    assert after[("spikegpt:num_requests_running",)] == 0
    assert after[("spikegpt:num_requests_waiting",)] == 0


def test_a_checkpoint_with_renamed_tensors_is_never_served(tmp_path, tiny_model_dir):
    """Through the real loader: /health says failed, naming the tensors, instead of serving random weights."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    tensors["renamed.head.weight"] = tensors.pop("head.weight")
    save_file(tensors, broken / "model.safetensors")
    with run_server(tiny_settings(broken), wait_ready=False) as server, server.client() as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health["status"] == "failed"
        assert "CheckpointError" in health["error"] and "missing head.weight" in health["error"]
        assert client.post("/v1/completions", json={"prompt": "ROMEO:"}).status_code == 503
