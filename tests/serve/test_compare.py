"""Comparing models: ``POST /v1/compare`` on a real server of two models, and ``spikegpt compare`` (the models run in
the command's own process), each held to the figures of the same seeded requests run by hand against the server
(``/v1/completions``, and echo + logprobs for the bits per byte, computed here from the log-probabilities). A model
that refuses (its queue full) ends its own column only; bad requests are refused as a whole."""

from __future__ import annotations

import json
import subprocess
from contextlib import ExitStack

import httpx
import pytest
from serve_helpers import figures_by_hand, metric_values, run_server, sse_events, tiny_settings

from spikegpt.energy.compare import FIGURES, format_table
from spikegpt.serve.testing import SPIKEGPT, ServerProcess

pytest_plugins = ["serve_fixtures"]  # deeper_model_dir

PROMPT, CONTINUATION = "Hello there", " and good morning, my friend."
SAMPLING = {"max_tokens": 12, "temperature": 0.9, "seed": 5, "ignore_eos": True}


@pytest.fixture(scope="module")
def models(tiny_model_dir, deeper_model_dir) -> dict[str, str]:
    return {"alpha": str(tiny_model_dir), "beta": str(deeper_model_dir)}


@pytest.fixture(scope="module")
def served(models):
    """A default server of both models (as `spikegpt compare` runs them), without its prefix-state cache, so that
    a request asked twice does the same work."""
    arguments = [a for name, path in models.items() for a in ("--model", path, "--served-model-name", name)]
    server = ServerProcess(*arguments, "--state-cache-mb", "0")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def expected(served) -> dict:
    with httpx.Client(base_url=served.url, timeout=60) as c:
        return {model: figures_by_hand(c, model, PROMPT, CONTINUATION, SAMPLING) for model in ("alpha", "beta")}


def compare(url: str, **body) -> httpx.Response:
    request = {"models": ["alpha", "beta"], "prompt": PROMPT, "continuation": CONTINUATION, **SAMPLING, **body}
    return httpx.post(url + "/v1/compare", json=request, timeout=60)


def check_table(table: dict, expected: dict) -> None:
    assert [f["key"] for f in table["figures"]] == [f.key for f in FIGURES]
    assert [row["model"] for row in table["rows"]] == ["alpha", "beta"] and table["reference"] == "alpha"
    for row in table["rows"]:
        by_hand_figures = expected[row["model"]]["figures"]
        assert row["values"]["bits_per_byte"] == pytest.approx(by_hand_figures["bits_per_byte"], rel=1e-12)  # (a sum)
        assert {k: v for k, v in row["values"].items() if k != "bits_per_byte"} == {
            k: v for k, v in by_hand_figures.items() if k != "bits_per_byte"
        }
    alpha, beta = (row["values"] for row in table["rows"])
    assert table["rows"][1]["relative"]["firing_rate"] == beta["firing_rate"] / alpha["firing_rate"]
    assert set(table["rows"][0]["relative"].values()) == {1.0}


def test_compare_answers_the_figures_of_the_same_requests_run_by_hand(served, expected):
    response = compare(served.url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [run["model"] for run in body["runs"]] == ["alpha", "beta"]
    for run in body["runs"]:
        assert run["text"] == expected[run["model"]]["text"] and "error" not in run
    check_table(body["table"], expected)
    # the two models differ, so the table shows differences
    assert body["table"]["rows"][0]["values"] != body["table"]["rows"][1]["values"]


def test_a_streamed_comparison_interleaves_the_models_and_ends_with_the_table(served, expected):
    with httpx.stream("POST", served.url + "/v1/compare", json=compare_body(stream=True), timeout=60) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]" and events[-2]["object"] == "compare.table"
    chunks = events[:-2]
    for model in ("alpha", "beta"):
        mine = [e for e in chunks if e["model"] == model]
        assert "".join(c["text"] for e in mine for c in e["choices"]) == expected[model]["text"]
        spikes = [s for e in mine for c in e["choices"] for s in c["spikes"]]  # the page draws each token's spikes
        assert len(spikes) == expected[model]["figures"]["tokens"]
        assert mine[-1]["usage"]["completion_tokens"] == len(spikes) and "energy" in mine[-1]
    check_table(events[-2], expected)


def compare_body(**extra) -> dict:
    return {"models": ["alpha", "beta"], "prompt": PROMPT, "continuation": CONTINUATION, **SAMPLING, **extra}


def test_spikegpt_compare_prints_the_figures_of_the_same_requests_run_by_hand(served, models, expected):
    command = [SPIKEGPT, "compare", "--model", models["alpha"], "--model", models["beta"], "--prompt", PROMPT]
    command += ["--continuation", CONTINUATION, "--max-tokens", "12", "--temperature", "0.9", "--seed", "5"]
    command += ["--ignore-eos", "--threads", "1"]  # as the server computes (ServerProcess: --threads 1)
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [run["text"] for run in out["runs"]] == [expected["alpha"]["text"], expected["beta"]["text"]]
    # the command names its models as given; the server as served
    for row, name in zip(out["table"]["rows"], ("alpha", "beta"), strict=True):
        row["model"] = name
    out["table"]["reference"] = "alpha"
    check_table(out["table"], expected)
    text = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    table = format_table(json.loads(result.stdout)["table"])
    assert text.stdout.rstrip("\n").endswith(table)  # the same table, after each model's text


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"models": ["alpha"]}, 400, "models: List should have at least 2 items"),
        ({"models": ["alpha", "alpha"]}, 400, "'alpha' is named twice"),
        ({"models": ["alpha", "gamma"]}, 404, "the model 'gamma' does not exist"),
        ({"n": 2}, 400, "n must be 1"),
        ({"prompt": ["Hi"]}, 400, "prompt: Input should be a valid string"),
        ({"continuation": "x" * 5000}, 400, "continuation: the prompt has"),
    ],
)
def test_bad_comparisons_are_refused_as_a_whole(served, body, status, words):
    response = httpx.post(served.url + "/v1/compare", json={**compare_body(), **body}, timeout=60)
    assert response.status_code == status and words in response.json()["error"]["message"], response.text


def test_a_model_that_refuses_ends_only_its_own_column(tiny_model_dir, deeper_model_dir):
    """alpha's only batch slot is taken (and it has no queue): its column is a 429 error naming it, beta's runs;
    refused by both, the comparison is a 429."""
    settings = tiny_settings(
        tiny_model_dir, model=None, models=(str(tiny_model_dir), str(deeper_model_dir)),
        served_model_names=("alpha", "beta"), max_batch=1, max_queue=0, state_cache_mb=0,
    )  # fmt: skip
    endless = {"prompt": "Hello", "max_tokens": 100_000, "ignore_eos": True, "stream": True}
    with run_server(settings) as server, ExitStack() as stack:
        hog = stack.enter_context(server.client()).stream("POST", "/v1/completions", json={**endless, "model": "alpha"})
        lines = stack.enter_context(hog).iter_lines()
        next(lines)  # alpha is busy
        whole = compare(server.url).json()
        assert whole["runs"][0]["error"]["code"] == "queue_full" and whole["runs"][0]["model"] == "alpha"
        assert whole["runs"][1]["text"] and "error" not in whole["runs"][1]
        alpha_row, beta_row = whole["table"]["rows"]
        assert set(alpha_row["values"].values()) == {None} and beta_row["values"]["tokens"] == 12
        with httpx.stream("POST", server.url + "/v1/compare", json=compare_body(stream=True), timeout=60) as streamed:
            events = sse_events(streamed)
        errors = [e for e in events[:-2] if "error" in e]
        assert errors == [{"model": "alpha", "error": whole["runs"][0]["error"]}]
        assert events[-2]["rows"][1]["values"]["tokens"] == 12
        with server.client() as c:
            values = metric_values(c)
        assert (
            values[("spikegpt:requests_total", ("endpoint", "compare"), ("model", "alpha"), ("outcome", "rejected"))]
            == 2
        )
        assert (
            values[("spikegpt:requests_total", ("endpoint", "compare"), ("model", "beta"), ("outcome", "success"))] == 2
        )
        hog2 = stack.enter_context(server.client()).stream("POST", "/v1/completions", json={**endless, "model": "beta"})
        busy = stack.enter_context(hog2).iter_lines()  # kept: a dropped iterator would close the stream
        next(busy)  # now beta is busy too
        refused = compare(server.url)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"


def test_spikegpt_compare_explains_every_flag_and_refuses_bad_input_in_one_line(tmp_path, models):
    from spikegpt.cli import build_parser
    from spikegpt.commands.common import BUNDLED_NAMES_HELP
    from spikegpt.hub.checkpoint import BUNDLED_MODELS

    assert ", ".join(BUNDLED_MODELS) == BUNDLED_NAMES_HELP  # the help names the bundled models
    parser = build_parser()._subparsers._group_actions[0].choices["compare"]
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    two = ["--model", models["alpha"], "--model", models["beta"]]
    for arguments, words in [
        (["--model", models["alpha"]], "give --model two or three times, got 1"),
        (["--model", models["alpha"], "--model", models["alpha"]], "each model once: a --model is given twice"),
        ([*two, "--dataset", str(empty)], f"{empty}: the file is empty: nothing to score"),
        (["--model", models["alpha"], "--model", "/no/such/model"], "/no/such/model: no such model directory"),
    ]:
        result = subprocess.run([SPIKEGPT, "compare", "--prompt", "Hi", *arguments], capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == f"spikegpt compare: error: {words}"
