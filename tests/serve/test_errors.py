"""Bad requests get a clear OpenAI-style error, the right status, and never a traceback; the server carries on."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from serve_helpers import TIMEOUT, run_server, tiny_settings
from test_overload import wait_for

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

OK = {"prompt": "Hi", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def check_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 2}, "prompt"),
        ({**OK, "max_tokens": "5"}, "max_tokens"),  # wrong types are not coerced
        ({**OK, "max_tokens": 2.5}, "max_tokens"),  # 2.0 is an integer, as in JSON Schema (test_openapi)
        ({**OK, "max_tokens": True}, "max_tokens"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "seed": 1.5}, "seed"),
        ({**OK, "prompt": 5}, "prompt"),
        ({**OK, "prompt": []}, "prompt"),
        ({**OK, "prompt": [1, "a"]}, "prompt"),
        ({**OK, "temperature": 3}, "temperature"),  # out of range
        ({**OK, "top_p": 0}, "top_p"),
        ({**OK, "n": 0}, "n"),
        ({**OK, "n": 100}, "n"),
        ({**OK, "max_tokens": -1}, "max_tokens"),  # 0 is a score-only request (test_tokens_and_scores)
        ({**OK, "max_tokens": 10**9}, "max_tokens"),  # over the server's cap
        ({**OK, "logprobs": 50}, "logprobs"),
        ({**OK, "presence_penalty": 5}, "presence_penalty"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**OK, "stop": [""]}, "stop"),
        ({**OK, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**OK, "logit_bias": {"5": 1.0}}, "logit_bias"),
        ({**OK, "best_of": 3}, "best_of"),
        ({**OK, "prompt": [99999]}, "prompt"),
        ({**OK, "prompt": "x" * 5000}, "prompt"),  # over the server's prompt limit
    ],
)
def test_bad_completion_requests_are_400(client, body, param):
    check_error(client.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 2}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
        ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools"),
        ({**CHAT, "response_format": {"type": "json_object"}}, "response_format.type"),
    ],
)
def test_bad_chat_requests_are_400(client, body, param):
    check_error(client.post("/v1/chat/completions", json=body), 400, param)


def test_malformed_json_and_non_objects(client):
    error = check_error(
        client.post("/v1/completions", content=b'{"prompt": "Hi"', headers={"content-type": "application/json"}), 400
    )
    assert error["code"] == "invalid_json"
    check_error(client.post("/v1/completions", json=[1, 2]), 400)
    check_error(
        client.post("/v1/chat/completions", content=b"\xff\xfe", headers={"content-type": "application/json"}), 400
    )


def test_unknown_model_is_404_and_unknown_path_is_404(client):
    error = check_error(client.post("/v1/completions", json={**OK, "model": "gpt-17"}), 404, "model")
    assert error["code"] == "model_not_found"
    check_error(client.get("/v1/models/gpt-17"), 404)
    check_error(client.get("/v1/nothing-here"), 404)
    check_error(client.get("/v1/completions"), 405)


def test_tokenize_and_detokenize_errors(client):
    check_error(client.post("/tokenize", json={"prompt": "a", "messages": [{"role": "user", "content": "a"}]}), 400)
    check_error(client.post("/detokenize", json={"tokens": [10**6]}), 400, "tokens")
    assert client.post(
        "/detokenize", json={"tokens": client.post("/tokenize", json={"prompt": "abc"}).json()["tokens"]}
    ).json() == {"prompt": "abc"}


def test_the_server_still_serves_after_bad_requests(client):
    for _ in range(3):
        client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert client.post("/v1/completions", json=OK).status_code == 200


@pytest.fixture(scope="module")
def guarded(tiny_model_dir):
    """API key, CORS and a small body limit."""
    settings = tiny_settings(
        tiny_model_dir, api_key="sesame", cors_origins=("https://app.example",), max_body_bytes=512
    )
    with run_server(settings) as server:
        yield server


def test_api_key_guards_the_api_but_not_health_or_metrics(guarded):
    with guarded.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic sesame"},
            {"Authorization": "sesame"},
        ):
            error = check_error(client.post("/v1/completions", json=OK, headers=headers), 401)
            assert error["code"] == "invalid_api_key"
        check_error(client.get("/v1/models"), 401)
        check_error(client.post("/tokenize", json={"prompt": "a"}), 401)
        good = {"Authorization": "Bearer sesame"}
        assert client.post("/v1/completions", json=OK, headers=good).status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200


def test_body_size_limit_is_413(guarded):
    good = {"Authorization": "Bearer sesame"}
    with guarded.client(headers=good) as client:
        error = check_error(client.post("/v1/completions", json={**OK, "prompt": "a" * 1000}), 413)
        assert error["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit applies as the body arrives
            for _ in range(10):
                yield b" " * 100

        check_error(client.post("/v1/completions", content=chunks()), 413)
        assert client.post("/v1/completions", json=OK).status_code == 200


@pytest.fixture(scope="module")
def impatient(tiny_model_dir):
    """A request body may go 1 s without a byte."""
    with run_server(tiny_settings(tiny_model_dir, request_body_timeout=1.0)) as server:
        yield server


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    return data


def test_a_half_sent_body_is_dropped_with_408_while_others_are_served(impatient):
    """A raw socket sends the headers and half the body, then waits: before the limit, it would hold its
    connection for ever."""
    address = urlsplit(impatient.url)
    body = json.dumps(OK).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=TIMEOUT.read) as stalled:
        stalled.sendall(head + body[: len(body) // 2])
        with impatient.client() as other:
            assert other.post("/v1/completions", json=OK).status_code == 200
            assert other.get("/health").status_code == 200
        answer = _read_until_closed(stalled)  # the server closes the connection after its answer
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout" and "1 s" in error["message"]


def test_a_slow_body_that_keeps_arriving_is_served(impatient):
    def slowly():  # a pause shorter than the limit between parts
        body = json.dumps(OK).encode()
        for start in range(0, len(body), 8):
            time.sleep(0.2)
            yield body[start : start + 8]

    with impatient.client() as client:
        response = client.post("/v1/completions", content=slowly(), headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text


def test_a_request_longer_than_the_body_limit_is_still_cancelled_when_its_client_leaves(impatient):
    """Once the body is in, the server waits on the connection (unlimited) for the client to leave; a limit there
    would lose the disconnect, and this endless request would run on."""
    endless = {"prompt": "Hi", "max_tokens": 100_000, "ignore_eos": True}
    with (
        impatient.client(timeout=httpx.Timeout(30.0, read=2.0)) as client,  # leaves after 2 s, past the 1 s limit
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/v1/completions", json=endless)
    wait_for(lambda: impatient.host.worker.outstanding == 0)


def test_cors(guarded):
    with httpx.Client(base_url=guarded.url, timeout=TIMEOUT) as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = client.post(
            "/v1/completions", json=OK, headers={"Origin": "https://app.example", "Authorization": "Bearer sesame"}
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
