"""What a second model costs in one server: resident memory, and the first model's time to first token.

Starts ``spikegpt serve`` with the first model alone, then (a fresh process) with both, and in each waits until it
is ready, reads the process's resident memory (VmRSS, from /proc: after start-up and after the requests), and sends
``--requests`` streamed completions to the first model one after another, timing each from the request to the
first chunk that carries text. With both models, the first model is measured twice: with the second idle, and with
the second generating beside it all the while (an endless stream: the two engines share the CPUs). Prints one JSON
object per measurement, then a summary: the memory the second model adds, and the time-to-first-token ratios.

    python bench/serve_models.py                               # the bundled model beside its spike-driven sibling
    python bench/serve_models.py --model A --model B --requests 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from common import emit, percentiles

from spikegpt.serve.testing import ServerProcess

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


def resident_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def time_to_first_token(client: httpx.Client, model: str, max_tokens: int) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            chunk = json.loads(line[6:]) if first is None and line.startswith("data: {") else None
            if chunk is not None and any(choice["text"] for choice in chunk["choices"]):
                first = time.perf_counter() - start
    return first


@contextlib.contextmanager
def busy(url: str, model: str) -> Iterator[None]:
    """``model`` generating without end in the background until the block ends."""
    stop = threading.Event()
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1_000_000, "ignore_eos": True, "stream": True}

    def run() -> None:
        with (
            httpx.Client(base_url=url, timeout=None) as client,
            client.stream("POST", "/v1/completions", json=body) as s,
        ):
            for _ in s.iter_lines():
                if stop.is_set():
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.0)  # it is running
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def measure(models: list[str], label: str, args: argparse.Namespace, other_busy: bool = False) -> dict:
    arguments = [a for model in models for a in ("--model", model)]
    started = time.perf_counter()
    server = ServerProcess(*arguments, "--max-tokens-cap", "1000000", threads=args.threads, echo_errors=True)
    try:
        url = server.wait_ready(timeout=600)
        ready_s = time.perf_counter() - started
        rss_ready = resident_bytes(server.process.pid)
        served = [card["id"] for card in httpx.get(url + "/v1/models", timeout=30).json()["data"]]
        record = {"setting": label, "models": served, "ready_s": ready_s, "rss_ready_mib": rss_ready / 2**20}
        with httpx.Client(base_url=url, timeout=120) as client:
            time_to_first_token(client, served[0], args.max_tokens)  # warm
            scenarios = [("idle", contextlib.nullcontext())]
            if other_busy and len(served) > 1:
                scenarios.append(("beside_busy", busy(url, served[1])))
            for name, context in scenarios:
                with context:
                    ttfts = [time_to_first_token(client, served[0], args.max_tokens) for _ in range(args.requests)]
                record[f"ttft_ms_{name}"] = percentiles(ttfts)
        record["rss_after_mib"] = resident_bytes(server.process.pid) / 2**20
        return emit(record)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a model (twice: the first, then the second)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per setting (default: 20)")
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens each timed request generates (default: 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the server's --threads")
    args = parser.parse_args()
    models = args.model or ["spikegpt-shakespeare", "spikegpt-shakespeare-driven"]
    if len(models) != 2:
        parser.error("give --model twice (or not at all)")
    one = measure(models[:1], "one model", args)
    two = measure(models, "two models", args, other_busy=True)
    emit(
        {
            "summary": "the second model's cost",
            "rss_added_mib": two["rss_ready_mib"] - one["rss_ready_mib"],
            "rss_added_after_requests_mib": two["rss_after_mib"] - one["rss_after_mib"],
            "ttft_p50_ratio_other_idle": two["ttft_ms_idle"]["p50"] / one["ttft_ms_idle"]["p50"],
            "ttft_p50_ratio_other_busy": two["ttft_ms_beside_busy"]["p50"] / one["ttft_ms_idle"]["p50"],
            "ready_s_added": two["ready_s"] - one["ready_s"],
            "cpus": os.cpu_count(),
            "threads": args.threads,
        }
    )


if __name__ == "__main__":
    main()
