"""``spikegpt serve`` as a process of its own, for the tests and the benchmarks: on a port the system picks (read
back from its log), ready when its ``/ready`` says so, stopped at the end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

# the command installed beside this Python (where pip puts it), else the one on PATH
SPIKEGPT = (
    str(Path(sys.executable).with_name("spikegpt"))
    if Path(sys.executable).with_name("spikegpt").exists()
    else (shutil.which("spikegpt") or "spikegpt")
)


class ServerProcess:
    """``spikegpt serve --port 0 --threads <threads> --no-access-log <args>`` in a subprocess; every line it writes
    to stderr is kept in ``log`` (``echo_errors``: lines that mention an error are also copied to this process's
    stderr, for a benchmark's reader)."""

    def __init__(self, *args: str, threads: int = 1, echo_errors: bool = False):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [SPIKEGPT, "serve", "--port", "0", "--threads", str(threads), "--no-access-log", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.url: str | None = None
        self._echo_errors = echo_errors
        self._started = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self._started.set()
            if self._echo_errors and "error" in line.lower():
                print(line.rstrip(), file=sys.stderr)

    def wait_ready(self, timeout: float = 120) -> str:
        """The server's URL, once ``/ready`` answers 200 (``/health`` is liveness only); raises ``TimeoutError``
        (with the server's log) if it does not start, or stops, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if not self._started.wait(timeout):
            raise TimeoutError(f"the server did not start:\n{''.join(self.log)}")
        while httpx.get(self.url + "/ready", timeout=5).status_code != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"the server did not become ready:\n{''.join(self.log)}")
            time.sleep(0.05)
        return self.url

    def stop(self, grace: float | None = None) -> None:
        """Kill the server; with ``grace``, first ask it to shut down (SIGTERM) and give it that many seconds."""
        if self.process.poll() is None:
            if grace is None:
                self.process.kill()
            else:
                self.process.terminate()
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
        self.process.wait(timeout=30)
