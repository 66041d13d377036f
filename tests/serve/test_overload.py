"""A full server answers 429; a client that goes away frees its slot, whether its request was running or queued."""

from __future__ import annotations

import logging
import socket
import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from serve_helpers import metric_values, run_server, tiny_settings

ENDLESS = {"prompt": "Hello", "max_tokens": 100_000, "ignore_eos": True, "stream": True}  # runs until cancelled


@pytest.fixture(scope="module")
def small(tiny_model_dir):
    """One batch slot and one queue place."""
    with run_server(tiny_settings(tiny_model_dir, max_batch=1, max_queue=1)) as server:
        yield server


@pytest.fixture
def idle(small):
    """The small server, checked idle before and after the test."""
    wait_for(lambda: small.host.worker.outstanding == 0)
    yield small
    wait_for(lambda: small.host.worker.outstanding == 0)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


def open_stream(stack: ExitStack, server, body: dict) -> httpx.Response:
    """A streaming request left open (closed, so cancelled, when the stack closes)."""
    client = stack.enter_context(server.client())
    response = stack.enter_context(client.stream("POST", "/v1/completions", json=body))
    assert response.status_code == 200
    return response


def gauges(server) -> tuple[float, float]:
    with server.client() as client:
        values = metric_values(client)
    return values[("spikegpt:num_requests_running",)], values[("spikegpt:num_requests_waiting",)]


def test_full_queue_is_429_with_an_openai_error(idle):
    with ExitStack() as stack, idle.client() as client:
        lines = open_stream(stack, idle, ENDLESS).iter_lines()  # (dropping the iterator would close the stream)
        next(lines)  # it is generating
        open_stream(stack, idle, ENDLESS)  # takes the queue place
        wait_for(lambda: gauges(idle) == (1, 1))
        refused = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        rejected = metric_values(client)[
            ("spikegpt:requests_total", ("endpoint", "completions"), ("outcome", "rejected"))
        ]
        assert rejected >= 1
    # the two streams were cancelled when their connections closed: the server takes work again
    with idle.client() as client:
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_disconnect_frees_a_running_slot(idle):
    with idle.client() as client:
        before = metric_values(client).get(("spikegpt:request_success_total", ("finished_reason", "abort")), 0)
        with client.stream("POST", "/v1/completions", json=ENDLESS) as response:
            next(response.iter_lines())
        # the only slot was taken by a request with 100000 tokens to go: this one runs only if it was freed
        done = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "ignore_eos": True})
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
        after = metric_values(client)
        assert after[("spikegpt:request_success_total", ("finished_reason", "abort"))] == before + 1
        assert after[("spikegpt:requests_total", ("endpoint", "completions"), ("outcome", "cancelled"))] >= 1


def test_disconnect_cancels_a_queued_request(idle):
    with ExitStack() as running_stack:
        lines = open_stream(running_stack, idle, ENDLESS).iter_lines()
        next(lines)
        with ExitStack() as queued_stack:
            open_stream(queued_stack, idle, ENDLESS)
            wait_for(lambda: gauges(idle) == (1, 1))
        # the queued request left the queue although the running one still holds the slot
        wait_for(lambda: gauges(idle) == (1, 0))
        assert idle.host.worker.outstanding == 1


def test_disconnect_cancels_a_non_streaming_request(idle):
    with idle.client(timeout=httpx.Timeout(30.0, read=1.0)) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json={**ENDLESS, "stream": False})
    wait_for(lambda: idle.host.worker.outstanding == 0)
    with idle.client() as client:
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


@contextmanager
def server_log():
    """Every record the server logs meanwhile (uvicorn's loggers do not propagate to the root logger)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("spikegpt", "uvicorn", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def cancelled(server) -> float:
    with server.client() as client:
        return metric_values(client).get(
            ("spikegpt:requests_total", ("endpoint", "completions"), ("outcome", "cancelled")), 0
        )


def leave_while_sending_the_body(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
        sock.sendall(head + b'\r\n{"prompt": "Hel')
        time.sleep(0.2)  # the server is reading the body when the connection closes


def leave_while_streaming(server) -> None:
    with server.client() as client, client.stream("POST", "/v1/completions", json=ENDLESS) as response:
        next(response.iter_lines())


def leave_while_waiting(server) -> None:
    with server.client(timeout=httpx.Timeout(30.0, read=0.5)) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json={**ENDLESS, "stream": False})


@pytest.mark.parametrize("leave", [leave_while_sending_the_body, leave_while_streaming, leave_while_waiting])
def test_a_client_leaving_at_any_point_is_one_cancellation_and_one_info_line(idle, leave):
    before = cancelled(idle)
    with server_log() as records:
        leave(idle)
        wait_for(lambda: cancelled(idle) == before + 1)
        wait_for(lambda: idle.host.worker.outstanding == 0)
    problems = [r for r in records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]
    lines = [r.getMessage() for r in records if "cancelled" in r.getMessage()]
    assert len(lines) == 1 and "the client left" in lines[0], lines
