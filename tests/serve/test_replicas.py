"""Two real `spikegpt serve` replicas behind a real nginx on loopback, with the proxy settings compose ships
(docker/nginx/proxy.conf): requests spread over both; one replica stopped (SIGTERM) under load: its /ready turns
503 while it drains, every non-streaming request still completes (nginx retries the refused ones on the other),
and its streams end with an error event and [DONE] while the other replica's go on.

nginx runs in the foreground with its own prefix and config in a temporary directory, on a free loopback port,
never system-wide. `.ci/run` installs Debian's nginx when it is missing; the test skips only where none is found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from spikegpt.serve.testing import ServerProcess

REPO = Path(__file__).resolve().parents[2]
PROXY_CONF = REPO / "docker" / "nginx" / "proxy.conf"
SBIN = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")  # not on PATH for every user
NGINX = shutil.which("nginx") or next((p for p in SBIN if Path(p).exists()), None)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx)")

GRACE = 3.0  # the stopped replica's --shutdown-grace
ENDLESS = {"prompt": "Hi", "max_tokens": 100_000, "ignore_eos": True, "stream": True}
SHORT = {"prompt": "Hello", "max_tokens": 16, "ignore_eos": True}


def nginx_config(prefix: Path, port: int, upstreams: list[str]) -> str:
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=10s;" for u in upstreams)
    user = "user root;" if os.geteuid() == 0 else ""  # workers as root may enter the private temporary directory
    return f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream spikegpt {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include {PROXY_CONF};
            proxy_pass http://spikegpt;
        }}
    }}
}}
"""


@pytest.fixture
def balanced(tiny_model_dir, tmp_path):
    """Two replicas (the second with a short shutdown grace) behind nginx: (nginx URL, replicas)."""
    replicas = [
        ServerProcess("--model", str(tiny_model_dir), "--max-tokens-cap", "100000", "--shutdown-grace", str(grace))
        for grace in (30, GRACE)
    ]
    nginx = None
    try:
        urls = [replica.wait_ready() for replica in replicas]
        port = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_config(prefix, port, [u.removeprefix("http://") for u in urls]))
        command = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
        nginx = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert nginx.poll() is None, nginx.stderr.read() + (prefix / "error.log").read_text()
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (prefix / "error.log").read_text()
            time.sleep(0.05)
        yield url, replicas
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
        for replica in replicas:
            replica.stop()


def served_by(response: httpx.Response) -> str:
    """The replica that answered: the last of nginx's X-Upstream addresses (more than one after a retry)."""
    return "http://" + response.headers["x-upstream"].split(",")[-1].strip()


class Stream:
    """An endless stream through nginx, read in a thread until it ends."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=60)
        self.context = self.client.stream("POST", "/v1/completions", json=ENDLESS)
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.replica = served_by(self.response)
        self.lines = self.response.iter_lines()
        self.events: list[str] = [next(self.lines)]  # the stream has started
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.lines:
                if line:
                    self.events.append(line.removeprefix("data: "))
        except httpx.HTTPError:
            self.events.append("<connection broken>")

    def close(self) -> None:
        self.client.close()


def test_requests_spread_and_survive_a_replica_stopping(balanced):
    url, (kept, stopped) = balanced
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as client:
        spread = Counter(served_by(client.post("/v1/completions", json=SHORT)) for _ in range(12))
    assert set(spread) == {kept.url, stopped.url} and min(spread.values()) >= 4, spread

    streams = [Stream(url) for _ in range(4)]
    on_stopped = [s for s in streams if s.replica == stopped.url]
    on_kept = [s for s in streams if s.replica == kept.url]
    assert on_stopped and on_kept, [s.replica for s in streams]

    # steady non-streaming load from three clients while the replica stops
    results: list[tuple[int, str]] = []
    stop_load = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop_load.is_set():
                response = client.post("/v1/completions", json=SHORT)
                results.append((response.status_code, response.headers.get("x-upstream", "")))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    stopped.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    readiness = []
    while stopped.process.poll() is None:  # /ready, asked directly, while the replica drains
        try:
            readiness.append(httpx.get(stopped.url + "/ready", timeout=2).status_code)
        except httpx.TransportError:
            break  # the port has closed: drained
        time.sleep(0.05)
    assert stopped.process.wait(timeout=GRACE + 30) in (0, -signal.SIGTERM)
    drained_in = time.monotonic() - signalled
    time.sleep(1.0)  # the load goes on with one replica
    stop_load.set()
    for worker in workers:
        worker.join(timeout=60)

    # unready from the moment the server handles the signal (it reaches its event loop asynchronously, so a poll
    # sent just after kill() may still be answered 200) until the port closed
    assert 503 in readiness, readiness
    assert set(readiness[readiness.index(503) :]) == {503}, readiness
    assert drained_in >= GRACE - 0.5  # the endless streams held it open for the whole grace
    assert results and all(status == 200 for status, _ in results), Counter(s for s, _ in results)
    retried = sum("," in upstream for _, upstream in results)
    assert retried >= 1  # the stopped replica's 503 was retried on the other (no client saw it)
    for stream in on_stopped:
        stream.thread.join(timeout=30)
        assert stream.events[-1] == "[DONE]", stream.events[-3:]
        assert json.loads(stream.events[-2])["error"]["code"] == "server_shutdown"
    for stream in on_kept:
        assert stream.thread.is_alive() and "error" not in stream.events[-1]  # still streaming
        assert len(stream.events) > 10
    for stream in streams:
        stream.close()
    print(
        f"replicas: spread {dict(spread)}; {len(results)} non-streaming requests under the stop, all 200, "
        f"{retried} retried by nginx; /ready 503 x{len(readiness)} while draining {drained_in:.1f} s; "
        f"streams {len(on_stopped)} ended with the error event, {len(on_kept)} went on; "
        f"{time.monotonic() - started:.1f} s"
    )
