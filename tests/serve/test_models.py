"""Several models in one real server (``spikegpt serve --model A --model B``, a process of its own): requests are
routed by their "model", an unknown one is a 404 and a missing one a 400; each model has its own queue (one full is
a 429 while the other answers), its own prefix-state cache (a prompt cached for one is a miss for the other) and its
own series in /metrics (a ``model`` label); a fault injected into one model's engine ends that model's stream only.
Also the settings of several models, and the start-up check that they fit in memory together."""

from __future__ import annotations

import json
import subprocess
from contextlib import ExitStack

import httpx
import pytest
import torch
from serve_helpers import completion_text, metric_values, run_server, sse_events, tiny_settings

from spikegpt import SpikeGPTConfig
from spikegpt.cli import build_parser
from spikegpt.hub.checkpoint import BUNDLED_MODELS
from spikegpt.serve.cli import settings_from_args
from spikegpt.serve.settings import ServeSettings, SettingsError
from spikegpt.serve.testing import SPIKEGPT, ServerProcess

ENDLESS = {"prompt": "Hello", "max_tokens": 100_000, "ignore_eos": True, "stream": True}  # runs until cancelled
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 2  # several prefill chunks of 8 tokens

pytest_plugins = ["serve_fixtures"]  # deeper_model_dir


@pytest.fixture(scope="module")
def pair(tiny_model_dir, deeper_model_dir):
    """alpha (two layers) and beta (three) in one server: one batch slot each, no queue, a state cache each."""
    server = ServerProcess(
        "--model", str(tiny_model_dir), "--served-model-name", "alpha",
        "--model", str(deeper_model_dir), "--served-model-name", "beta",
        "--max-batch", "1", "--max-queue", "0", "--max-tokens-cap", "100000", "--state-cache-mb", "16",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def completion(c: httpx.Client, **body) -> httpx.Response:
    return c.post("/v1/completions", json={"max_tokens": 3, **body})


def spike_sites(c: httpx.Client, model: str) -> int:
    """How many spiking sites the model that answered has (a model of n layers: 1 + 2n)."""
    body = {"model": model, "prompt": "Hi", "max_tokens": 2, "stream": True}
    events = sse_events(c.post("/v1/completions", json={**body, "stream_options": {"include_spikes": True}}))
    return len(events[0]["choices"][0]["spikes"][0]["counts"])


def test_requests_are_routed_by_their_model(pair):
    with client(pair) as c:
        cards = c.get("/v1/models").json()["data"]
        assert [card["id"] for card in cards] == ["alpha", "beta"]
        assert [card["spiking"]["n_layer"] for card in cards] == [2, 3]
        assert c.get("/v1/models/beta").json()["spiking"]["sites"] == cards[1]["spiking"]["sites"]
        assert (spike_sites(c, "alpha"), spike_sites(c, "beta")) == (5, 7)  # each answered by its own model
        answer = completion(c, model="beta", prompt="Hi")
        assert answer.status_code == 200 and answer.json()["model"] == "beta"
        chat = c.post("/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 200 and chat.json()["model"] == "alpha"
        assert c.post("/tokenize", json={"model": "beta", "prompt": "Hi"}).json()["count"] == 2
        assert c.get("/tokenizer_info", params={"model": "alpha"}).status_code == 200
        ready = c.get("/ready").json()
        assert ready == {"status": "ready", "models": {"alpha": {"status": "ready"}, "beta": {"status": "ready"}}}


def test_an_unknown_model_is_404_and_a_missing_one_400(pair):
    with client(pair) as c:
        for unknown in (completion(c, model="gamma", prompt="Hi"), c.get("/v1/models/gamma")):
            assert unknown.status_code == 404
            assert unknown.json()["error"] == {
                "message": "the model 'gamma' does not exist; this server serves 'alpha', 'beta'",
                "type": "not_found_error",
                "param": "model",
                "code": "model_not_found",
            }
        for missing in (completion(c, prompt="Hi"), c.get("/tokenizer_info")):
            assert missing.status_code == 400
            error = missing.json()["error"]
            assert error["param"] == "model" and "this server serves 'alpha', 'beta'" in error["message"]
        # a body that is no JSON is refused as such, whatever it names
        garbage = c.post("/v1/completions", content=b"{", headers={"Content-Type": "application/json"})
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"


def test_a_full_model_is_429_while_the_other_answers(pair):
    with ExitStack() as stack, client(pair) as c:
        hog = stack.enter_context(client(pair))
        response = stack.enter_context(hog.stream("POST", "/v1/completions", json={**ENDLESS, "model": "alpha"}))
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)  # alpha's only slot is taken, and it has no queue
        refused = completion(c, model="alpha", prompt="Hi")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        answered = completion(c, model="beta", prompt="Hi", max_tokens=4, ignore_eos=True)
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 4
        values = metric_values(c)
        assert values[("spikegpt:num_requests_running", ("model", "alpha"))] == 1
        rejected = ("spikegpt:requests_total", ("endpoint", "completions"), ("model", "alpha"), ("outcome", "rejected"))
        assert values[rejected] >= 1
        assert (*rejected[:2], ("model", "beta"), ("outcome", "rejected")) not in values


def test_every_series_names_its_model(pair):
    with client(pair) as c:
        before = metric_values(c)
        assert completion(c, model="alpha", prompt="Hi", max_tokens=3, ignore_eos=True).status_code == 200
        assert completion(c, model="beta", prompt="Hi", max_tokens=5, ignore_eos=True).status_code == 200
        after = metric_values(c)
    for model, tokens in (("alpha", 3), ("beta", 5)):
        key = ("spikegpt:generation_tokens_total", ("model", model))
        assert after[key] - before.get(key, 0) == tokens
    unlabelled = [key for key in after if key[0].startswith("spikegpt:") and ("model", "alpha") not in key[1:]
                  and ("model", "beta") not in key[1:] and ("model", "") not in key[1:]]  # fmt: skip
    assert unlabelled == []


def test_caches_are_kept_apart(pair):
    body = {"prompt": LONG_PROMPT, "max_tokens": 2, "seed": 1}
    with client(pair) as c:
        before = metric_values(c)
        first = completion(c, model="alpha", **body).json()
        again = completion(c, model="alpha", **body).json()
        other = completion(c, model="beta", **body).json()
        after = metric_values(c)
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 and cached > 0  # alpha: a hit
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # beta: a miss, the same prompt

    def change(name: str, model: str) -> float:
        key = (f"spikegpt:state_cache_{name}_total", ("model", model))
        return after[key] - before.get(key, 0)

    assert (change("hits", "alpha"), change("misses", "alpha")) == (1, 1)
    assert (change("hits", "beta"), change("misses", "beta")) == (0, 1)


def test_one_models_fault_leaves_the_others_stream_intact(tiny_model_dir, deeper_model_dir):
    """A decoding failure injected into alpha's engine (by monkeypatching the in-process server's engine, as
    test_faults does) while a stream of beta and one of alpha run: alpha's ends with an error event, beta's runs to
    its end with the text it gives alone, and alpha serves again."""
    settings = tiny_settings(
        tiny_model_dir, model=None, models=(str(tiny_model_dir), str(deeper_model_dir)),
        served_model_names=("alpha", "beta"), max_batch=2,
    )  # fmt: skip
    beta_body = {"model": "beta", "prompt": "Hello", "max_tokens": 60, "ignore_eos": True, "seed": 3, "stream": True}
    with run_server(settings) as server, server.client() as c, server.client() as other:
        alone = sse_events(c.post("/v1/completions", json=beta_body))
        alpha = server.app.state.hosts.named("alpha").worker.engine
        original = alpha.runner.decode_step
        failed = []

        def decode_step(tokens, state):
            if not failed:
                failed.append(True)
                raise RuntimeError("injected decoding failure")
            return original(tokens, state)

        with other.stream("POST", "/v1/completions", json=beta_body) as beta_stream:
            beta_lines = beta_stream.iter_lines()
            beta_seen = [next(beta_lines)]  # beta is generating
            alpha.runner.decode_step = decode_step
            broken = sse_events(c.post("/v1/completions", json={**ENDLESS, "model": "alpha"}))
            beta_seen += [line for line in beta_lines if line]
        assert failed and broken[-1] == "[DONE]" and broken[-2]["error"]["type"] == "server_error"
        assert beta_seen[-1] == "data: [DONE]"
        beta = [json.loads(line.removeprefix("data: ")) for line in beta_seen[:-1]]
        assert completion_text(beta) == completion_text(alone[:-1]) != ""
        assert beta[-1]["choices"][0]["finish_reason"] == "length"
        assert c.post("/v1/completions", json={"model": "alpha", "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_three_models_by_their_bundled_names():
    """The bundled models by name: each served under its own name, as its own placement."""
    three = BUNDLED_MODELS[:3]  # the default, the spike-driven model and their twin
    settings = ServeSettings(models=three, state_cache_mb=0, max_batch=1, threads=torch.get_num_threads())
    with run_server(settings) as server, server.client() as c:
        cards = {card["id"]: card["spiking"]["placement"] for card in c.get("/v1/models").json()["data"]}
        assert cards == {
            "spikegpt-shakespeare": "residual",
            "spikegpt-shakespeare-driven": "inputs",
            "spikegpt-shakespeare-twin": "residual",
        }
        for name in three:
            assert completion(c, model=name, prompt="ROMEO:").json()["model"] == name


def test_settings_of_several_models(tmp_path):
    settings = ServeSettings(models=("a/x", "b/x"), served_model_names=("one", "two"), state_cache_dir=str(tmp_path))
    views = settings.model_settings()
    assert [(v.model, v.model_name) for v in views] == [("a/x", "one"), ("b/x", "two")]
    assert [v.state_cache_dir for v in views] == [str(tmp_path / "one"), str(tmp_path / "two")]
    with pytest.raises(SettingsError, match="one served model name per model"):
        ServeSettings(models=("a", "b"), served_model_names=("one",))
    same_names = [tmp_path / "one" / "x", tmp_path / "two" / "x"]
    for directory in same_names:
        directory.mkdir(parents=True)
    with pytest.raises(SettingsError, match="two models would be served as 'x'"):
        ServeSettings(models=tuple(str(d) for d in same_names))
    with pytest.raises(SettingsError, match="either model"):
        ServeSettings(model="a", models=("b", "c"))
    # as variables; the flags' models replace the variables' model
    environ = {"SPIKEGPT_MODELS": "a/x, b/y", "SPIKEGPT_SERVED_MODEL_NAMES": "one,two", "SPIKEGPT_MODEL": "c"}
    from_env = ServeSettings.from_env({k: v for k, v in environ.items() if k != "SPIKEGPT_MODEL"})
    assert [v.model_name for v in from_env.model_settings()] == ["one", "two"]
    args = build_parser().parse_args(["serve", "--model", "d", "--model", "e"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPIKEGPT_MODEL", "c")
        assert settings_from_args(args).models == ("d", "e")
        assert settings_from_args(build_parser().parse_args(["serve"])).model == "c"


def test_names_that_do_not_match_the_models_are_one_line(tiny_model_dir):
    command = [SPIKEGPT, "serve", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("spikegpt serve: error: two models would be served as")


def test_models_that_do_not_fit_together_are_refused_at_start(tmp_path):
    """Two configurations (no weights: the estimate reads the config alone), each about 60% of the memory this
    machine has free, so each alone fits and both together do not: one line, before anything loads."""
    from spikegpt.hub.checkpoint import available_memory, check_device, parameter_count

    config = SpikeGPTConfig(vocab_size=65, n_layer=1, n_embd=1024)
    per_layer = parameter_count(SpikeGPTConfig(**{**config.to_dict(), "n_layer": 2})) - parameter_count(config)
    layers = int(0.6 * available_memory(check_device("cpu")) / 4 / per_layer)
    for name in ("big-a", "big-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config.to_dict(), "n_layer": layers}))
    command = [SPIKEGPT, "serve", "--model", str(tmp_path / "big-a"), "--model", str(tmp_path / "big-b")]
    result = subprocess.run([*command, "--port", "0", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("spikegpt serve: error:")]
    assert len(errors) == 1 and "the 2 models together need about" in errors[0], result.stderr
    assert "ready in" not in result.stderr
