"""``spikegpt serve`` as a user runs it: flags and variables, a failed start, and a graceful shutdown."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import httpx
import pytest
from safetensors.torch import load_file, save_file

from spikegpt.cli import build_parser, main
from spikegpt.serve.cli import FLAGS, settings_from_args
from spikegpt.serve.testing import SPIKEGPT, ServerProcess


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in [*FLAGS, "--model", "--device", "--dtype"]:
        assert flag in out
    assert "SPIKEGPT_API_KEY" in out


def test_flags_beat_variables_beat_defaults(monkeypatch):
    monkeypatch.setenv("SPIKEGPT_MAX_BATCH", "8")
    monkeypatch.setenv("SPIKEGPT_API_KEY", "from-env")
    monkeypatch.setenv("SPIKEGPT_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("SPIKEGPT_BATCH_INVARIANT", "false")
    args = build_parser().parse_args(["serve", "--max-batch", "4", "--port", "9001"])
    settings = settings_from_args(args)
    assert settings.max_batch == 4 and settings.port == 9001  # flags
    assert settings.api_key == "from-env" and settings.batch_invariant is False  # variables
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.max_queue == 64 and settings.device == "cpu"  # defaults


def test_a_bad_variable_is_a_clear_error(monkeypatch):
    from spikegpt.serve.settings import ServeSettings, SettingsError

    monkeypatch.setenv("SPIKEGPT_MAX_BATCH", "lots")
    with pytest.raises(SettingsError, match="SPIKEGPT_MAX_BATCH"):
        ServeSettings.from_env()


def test_time_limits_are_settings(monkeypatch):
    from spikegpt.serve.settings import ServeSettings, SettingsError

    monkeypatch.setenv("SPIKEGPT_CHAT_TEMPLATE_TIMEOUT", "0.5")
    args = build_parser().parse_args(["serve", "--request-body-timeout", "2", "--chat-template-max-chars", "9"])
    settings = settings_from_args(args)
    assert (settings.chat_template_timeout, settings.request_body_timeout) == (0.5, 2.0)
    assert settings.chat_template_max_chars == 9
    for name in ("chat_template_timeout", "request_body_timeout"):
        for bad in (0, -1, float("nan")):
            with pytest.raises(SettingsError, match=name):
                ServeSettings(**{name: bad})


def test_a_model_that_cannot_load_exits_1_with_one_line():
    result = subprocess.run(
        [SPIKEGPT, "serve", "--model", "/no/such/model", "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "spikegpt serve: error: /no/such/model: no such model directory" in result.stderr


@pytest.mark.parametrize("broken", ["config", "weights"])
def test_a_model_that_is_not_numbers_never_serves(tmp_path, tiny_model_dir, broken):
    """A NaN in config.json or in a tensor: the server exits 1 with one line naming it, before it was ever ready."""
    model_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, model_dir)
    if broken == "config":
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "lif_threshold": float("nan")}))
    else:
        tensors = load_file(model_dir / "model.safetensors")
        tensors["model.blocks.0.att.key.weight"][4, 2] = float("nan")
        save_file(tensors, model_dir / "model.safetensors")
    command = [SPIKEGPT, "serve", "--model", str(model_dir), "--port", "0", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("spikegpt serve: error:")]
    assert len(errors) == 1
    named = "lif_threshold must be a finite number" if broken == "config" else "model.blocks.0.att.key.weight holds"
    assert named in errors[0]
    assert "ready in" not in result.stderr  # the host's "serving ... ready in N s" line: it never served


def test_sigterm_lets_short_streams_finish_and_ends_long_ones_cleanly(tiny_model_dir):
    server = ServerProcess("--model", str(tiny_model_dir), "--shutdown-grace", "5", "--max-tokens-cap", "100000")
    try:
        url = server.wait_ready()
        with httpx.Client(base_url=url, timeout=30) as a, httpx.Client(base_url=url, timeout=30) as b:
            endless = {"prompt": "Hi", "max_tokens": 100_000, "ignore_eos": True, "stream": True}
            short = {"prompt": "Hi", "max_tokens": 20, "ignore_eos": True, "stream": True}
            with a.stream("POST", "/v1/completions", json=endless) as long_stream:
                assert long_stream.status_code == 200
                long_lines = long_stream.iter_lines()
                next(long_lines)
                with b.stream("POST", "/v1/completions", json=short) as short_stream:
                    assert short_stream.status_code == 200
                    server.process.send_signal(signal.SIGTERM)
                    short_events = [line for line in short_stream.iter_lines() if line]
                long_events = [line for line in long_lines if line]
        assert short_events[-1] == "data: [DONE]"
        assert json.loads(short_events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
        assert long_events[-1] == "data: [DONE]"
        error = json.loads(long_events[-2].removeprefix("data: "))["error"]
        assert error["code"] == "server_shutdown"
        assert server.process.wait(timeout=30) == 0  # a clean shutdown (uvicorn alone re-raises the signal)
        assert not any("Traceback" in line for line in server.log), "".join(server.log)
    finally:
        server.stop()


def test_serve_starts_without_warnings(tiny_model_dir):
    """Nothing on stderr from a start but uvicorn's and the server's own INFO lines: no transformers warnings about
    its own internals (is_gradient_checkpointing, loss_type) and no "Loading weights" bar in a log."""
    server = ServerProcess("--model", str(tiny_model_dir))
    try:
        url = server.wait_ready()
        assert httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30).is_success
    finally:
        server.stop()
    lines = [line.rstrip("\n") for line in server.log if line.strip()]
    assert lines and all(line.startswith("INFO:") or " INFO " in line for line in lines), "\n".join(lines)
