"""A model directory's chat template is untrusted input (checkpoints come from the Hub): one that loops, grows huge
or raises gets 400 naming it, within the limit, with one log line; the server answers everyone else meanwhile, and
SIGTERM still ends it within the grace, even in the middle of a runaway render."""

from __future__ import annotations

import logging
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from serve_helpers import TIMEOUT, run_server, tiny_settings
from test_errors import OK, check_error

from spikegpt.serve.testing import ServerProcess

MAX_CHARS = 100_000
FAULTS = {  # the last message → (what the template does with it, what the 400 says)
    "loop": (
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x",
        "took longer than 1 s to render",
    ),
    "huge": ("{{ 'x' * 10**10 }}", "ran out of the memory a render may use"),
    "long": ("{{ 'x' * 200000 }}", f"rendered more than {MAX_CHARS} characters"),
    "raise": ("{% for i in range(100000000) %}{% endfor %}", "cannot render these messages: OverflowError"),
}


def chat_template(*faults: str) -> str:
    """One template with the ``faults`` chosen by the last message, and a plain prompt for any other message
    (a server per template would cost a start each)."""
    template = "{%- set text = messages[-1]['content'] -%}{%- if false -%}"
    for fault in faults:
        template += f"{{%- elif text == '{fault}' -%}}{FAULTS[fault][0]}"
    return template + "{%- else -%}User: {{ text }}\n\nAssistant:{%- endif -%}"


def chat_body(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 2}


@pytest.fixture
def hub_model_dir(tiny_model_dir, tmp_path):
    """The tiny model as a directory from elsewhere might come: with a hostile chat_template.jinja."""

    def with_template(template: str) -> Path:
        path = tmp_path / "from-the-hub"
        shutil.copytree(tiny_model_dir, path)
        (path / "chat_template.jinja").write_text(template)
        return path

    return with_template


def test_a_runaway_template_gets_400_while_the_server_answers_others(hub_model_dir, caplog):
    model_dir = hub_model_dir(chat_template(*FAULTS))
    settings = tiny_settings(model_dir, chat_template_timeout=1.0, chat_template_max_chars=MAX_CHARS)
    caplog.set_level(logging.INFO)
    with run_server(settings) as server, ThreadPoolExecutor(1) as pool:
        name = f"the chat template of {server.host.model_name!r}"
        for fault, (_, reason) in FAULTS.items():
            with server.client() as client, server.client() as other:
                chat = pool.submit(client.post, "/v1/chat/completions", json=chat_body(fault))
                assert other.get("/health").status_code == 200
                assert other.post("/v1/completions", json=OK).status_code == 200
                assert other.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).is_success
                error = check_error(chat.result(), 400, "messages")
            assert error["message"].startswith(f"{name} {reason}"), error["message"]
        with server.client() as client:  # every path that renders is bounded, and the workers are replaced
            check_error(client.post("/tokenize", json={"messages": [{"role": "user", "content": "raise"}]}), 400)
            assert client.post("/v1/chat/completions", json=chat_body("Hi")).status_code == 200
    refusals = [r for r in caplog.records if "chat template" in r.getMessage()]
    assert len(refusals) == len(FAULTS) + 1, [r.getMessage() for r in refusals]  # one line each
    assert not any(r.exc_info for r in caplog.records)  # and no traceback


def _ended(process: psutil.Process) -> bool:
    """Whether the process has exited (a zombie has: only its new parent has yet to reap it)."""
    try:
        process.wait(timeout=10)
        return True
    except psutil.TimeoutExpired:
        pass
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cpu_seconds(process: psutil.Process) -> float:
    """User CPU time of the process and its children (the template workers) alive now."""
    return sum(p.cpu_times().user for p in [process, *process.children()])


def _wait_until_it_renders(server: ServerProcess) -> None:
    """Until the idle server (or its template worker) burns CPU: it is rendering the runaway template."""
    process = psutil.Process(server.process.pid)
    idle = _cpu_seconds(process)
    deadline = time.monotonic() + 120
    while _cpu_seconds(process) < idle + 0.5:
        assert time.monotonic() < deadline, "the server never rendered"
        time.sleep(0.05)


def test_sigterm_ends_the_server_within_the_grace_in_the_middle_of_a_runaway_render(hub_model_dir):
    """The render's own limit (60 s) is longer than the grace (1 s): the grace wins, the render is stopped, its
    request answers 503, the process exits with status 0, and the worker does not outlive it."""
    grace = 1
    model_dir = hub_model_dir(chat_template("loop"))
    server = ServerProcess("--model", str(model_dir), "--chat-template-timeout", "60", "--shutdown-grace", str(grace))
    try:
        url = server.wait_ready()
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client, ThreadPoolExecutor(1) as pool:
            assert client.post("/v1/chat/completions", json=chat_body("Hi")).status_code == 200  # starts a worker
            workers = psutil.Process(server.process.pid).children()
            chat = pool.submit(client.post, "/v1/chat/completions", json=chat_body("loop"))
            _wait_until_it_renders(server)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=grace + 20) == 0, "".join(server.log)
            error = check_error(chat.result(), 503)
        assert error["code"] == "server_shutdown"
        assert workers and all(_ended(worker) for worker in workers)  # no worker outlives the server
        assert not any("Traceback" in line for line in server.log), "".join(server.log)
    finally:
        server.stop()
