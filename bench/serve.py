"""Load generator for the HTTP server: request throughput, output tokens/s, TTFT and inter-token latency.

Streams completions at a fixed concurrency (or with Poisson arrivals at ``--rate`` requests/s) and measures, per
level, request throughput, output tokens/s (the server's own usage counts), time to first token, inter-token
latency (the gap between streamed chunks that carry text, as vLLM's ``bench serve`` defines it), TPOT
((latency - TTFT) / (output tokens - 1)) and end-to-end latency. Each prompt is exactly ``--prompt-tokens``
tokens (sent as token ids) and each request generates exactly ``--max-tokens`` tokens (``ignore_eos``).

The peer, measured in the same run when the bench starts the server itself (``--model``): the same requests
through the engine alone, in this process, with no HTTP, JSON or client, at the same concurrency levels; the ratio
says what the service around the engine costs. Bounded in count (``--requests`` per level) and time
(``--time-limit`` per level). Prints one JSON object per measurement, then a summary with the goals of issue 6:
aggregate tokens/s at concurrency 16 ≥ 6x concurrency 1, and p50 TTFT < 100 ms at concurrency 1.

    python bench/serve.py --model path/to/model            # starts `spikegpt serve` on a free local port
    python bench/serve.py --model bundled                  # the bundled model
    python bench/serve.py --url http://127.0.0.1:8000      # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPT_TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n"
)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def percentiles(values: list[float], scale: float = 1000.0) -> dict | None:
    """p50/p90/p99 and mean, in milliseconds by default."""
    if not values:
        return None
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * scale

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "mean": statistics.fmean(values) * scale}


@dataclass
class Result:
    ttft: float | None = None
    latency: float = 0.0
    output_tokens: int = 0
    chunk_gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    error: str | None = None


async def one_request(client: httpx.AsyncClient, body: dict) -> Result:
    result = Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.chunk_gaps.append(now - last)
                    last = now
                    result.chunks += 1
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    result.latency = time.perf_counter() - start
    return result


async def run_level(
    url: str, bodies: list[dict], concurrency: int, rate: float | None, time_limit: float, api_key: str | None
) -> tuple[list[Result], float]:
    """Send ``bodies`` with at most ``concurrency`` in flight (and Poisson arrivals at ``rate``); stop starting new
    requests after ``time_limit`` seconds."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    arrivals = random.Random(0)
    results: list[Result] = []
    async with httpx.AsyncClient(
        base_url=url, headers=_auth(api_key), limits=limits, timeout=httpx.Timeout(300.0)
    ) as client:

        async def send(body: dict) -> None:
            async with gate:
                results.append(await one_request(client, body))

        start = time.perf_counter()
        tasks = []
        for body in bodies:
            if time.perf_counter() - start > time_limit:
                break
            if rate:
                await asyncio.sleep(arrivals.expovariate(rate))
            else:
                while gate.locked():  # fixed concurrency: start the next request as soon as one ends
                    await asyncio.sleep(0.001)
            tasks.append(asyncio.create_task(send(body)))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=2 * time_limit + 60)
        duration = time.perf_counter() - start
    return results, duration


def summarize(results: list[Result], duration: float, **context) -> dict:
    ok = [r for r in results if r.error is None]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.ttft is not None and r.output_tokens > 1]
    return {
        "measurement": "serve",
        **context,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:3],
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_tokens_per_s": tokens / duration,
        "ttft_ms": percentiles([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": percentiles([gap for r in ok for gap in r.chunk_gaps]),
        "tpot_ms": percentiles(tpot),
        "e2e_ms": percentiles([r.latency for r in ok]),
        "tokens_per_chunk": tokens / max(1, sum(r.chunks for r in ok)),
    }


def prompt_ids(url: str, tokens: int, api_key: str | None) -> list[int]:
    """Exactly ``tokens`` token ids of English verse, through the server's own tokenizer."""
    ids: list[int] = []
    with httpx.Client(base_url=url, headers=_auth(api_key), timeout=30) as client:
        while len(ids) < tokens:
            response = client.post("/tokenize", json={"prompt": PROMPT_TEXT, "add_special_tokens": False})
            response.raise_for_status()
            ids += response.json()["tokens"]
    return ids[:tokens]


def request_bodies(ids: list[int], count: int, max_tokens: int, offset: int) -> list[dict]:
    return [
        {
            "prompt": ids,
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": offset + i,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(count)
    ]


class ServerProcess:
    """``spikegpt serve`` on a port the system picks, for the duration of the bench."""

    def __init__(self, model: str | None, extra: list[str]):
        spikegpt = str(Path(sys.executable).with_name("spikegpt"))
        command = [spikegpt, "serve", "--port", "0", "--no-access-log", "--max-tokens-cap", "100000", *extra]
        if model is not None:
            command += ["--model", model]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.url: str | None = None
        self._started = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self._started.set()
            if "error" in line.lower():
                print(line.rstrip(), file=sys.stderr)

    def wait_ready(self, timeout: float = 300) -> str:
        if not self._started.wait(timeout):
            raise RuntimeError("the server did not start")
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/health", timeout=5).status_code != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)
        return self.url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def engine_peer(
    model: str | None,
    ids: list[int],
    levels: list[int],
    requests: int,
    max_tokens: int,
    threads: int,
    compile: bool,
    device: str | None = None,
    decode: str | None = None,
):
    """The same requests through the engine alone (no HTTP), in this process."""
    import torch

    from spikegpt.checkpoint import load_model
    from spikegpt.engine import Engine, GenerationRequest
    from spikegpt.sampling import SamplingParams

    torch.set_num_threads(threads)
    loaded, tokenizer = load_model(model, device or "cpu")
    engine = Engine(loaded, tokenizer, max_batch=max(levels), compile=compile, decode=decode or "auto")
    engine.submit(GenerationRequest("warm-up", ids, SamplingParams(max_tokens=4)))  # compiles, with --compile
    while engine.has_work():
        engine.step()
    for concurrency in levels:
        pending = [
            GenerationRequest(f"r{i}", ids, SamplingParams(max_tokens=max_tokens, seed=i, ignore_eos=True))
            for i in range(requests)
        ]
        in_flight, tokens = 0, 0
        start = time.perf_counter()
        while pending or in_flight:
            while pending and in_flight < concurrency:
                engine.submit(pending.pop(0))
                in_flight += 1
            for event in engine.step():
                if event.finish_reason is not None:
                    in_flight -= 1
                    tokens += event.completion_tokens
        duration = time.perf_counter() - start
        emit(
            {
                "measurement": "engine_peer",
                "concurrency": concurrency,
                "requests": requests,
                "output_tokens_per_s": tokens / duration,
                "request_throughput": requests / duration,
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", metavar="DIR|HUB_ID|bundled", help="start `spikegpt serve` with this model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="levels (default: 1 4 16)")
    parser.add_argument("--rate", type=float, default=None, help="Poisson arrivals, requests/s (default: none)")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per level (default: 4x concurrency, at least 16)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (default: 64)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request (default: 128)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per level (default: 120)")
    parser.add_argument("--threads", type=int, default=1, help="server's model threads with --model (default: 1)")
    parser.add_argument("--compile", action="store_true", help="with --model: serve with --compile (and the peer)")
    parser.add_argument("--device", default=None, help="with --model: the server's (and the peer's) device")
    parser.add_argument(
        "--decode", default=None, choices=["auto", "dense", "sparse"], help="with --model: serve with --decode"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the engine-only peer (with --model)")
    parser.add_argument("--api-key", default=None, help="bearer key of the server, if it has one")
    args = parser.parse_args(argv)

    server = None
    model = None if args.model in (None, "bundled") else args.model
    if args.url is None:
        extra = ["--max-batch", str(max(args.concurrency)), "--threads", str(args.threads)]
        extra += ["--compile"] if args.compile else []
        extra += ["--device", args.device] if args.device else []
        extra += ["--decode", args.decode] if args.decode else []
        server = ServerProcess(model, extra)
    try:
        url = args.url or server.wait_ready()
        ids = prompt_ids(url, args.prompt_tokens, args.api_key)
        model_name = httpx.get(url + "/v1/models", headers=_auth(args.api_key), timeout=30).json()["data"][0]["id"]
        by_level = {}
        for n, concurrency in enumerate(args.concurrency):
            count = args.requests or max(16, 4 * concurrency)
            # warm-up: one request, so that the first measured one pays no first-call costs
            asyncio.run(run_level(url, request_bodies(ids, 1, 8, 10**6), 1, None, args.time_limit, args.api_key))
            bodies = request_bodies(ids, count, args.max_tokens, n * 10_000)
            results, duration = asyncio.run(
                run_level(url, bodies, concurrency, args.rate, args.time_limit, args.api_key)
            )
            record = summarize(
                results,
                duration,
                model=model_name,
                concurrency=concurrency,
                rate=args.rate,
                prompt_tokens=args.prompt_tokens,
                max_tokens=args.max_tokens,
            )
            by_level[concurrency] = record
            emit(record)
    finally:
        if server is not None:
            server.stop()
    if args.model is not None and not args.no_peer:
        requests = args.requests or max(16, 4 * max(args.concurrency))
        engine_peer(
            model,
            ids,
            args.concurrency,
            requests,
            args.max_tokens,
            args.threads,
            args.compile,
            args.device,
            args.decode,
        )
    summary = {"measurement": "serve_summary", "model": model_name}
    lowest, highest = min(by_level), max(by_level)
    if by_level[lowest]["output_tokens_per_s"]:
        ratio = by_level[highest]["output_tokens_per_s"] / by_level[lowest]["output_tokens_per_s"]
        summary[f"tokens_per_s_ratio_{highest}_vs_{lowest}"] = ratio
        summary["goal_batched_6x"] = ratio >= 6 if (lowest, highest) == (1, 16) else None
    ttft = by_level[lowest]["ttft_ms"]
    summary["goal_ttft_p50_under_100ms"] = ttft is not None and ttft["p50"] < 100 if lowest == 1 else None
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
