"""Load generator for the HTTP server: request throughput, output tokens/s, TTFT and inter-token latency.

Streams completions at a fixed concurrency (or with Poisson arrivals at ``--rate`` requests/s) and measures, per
level, request throughput, output tokens/s (the server's own usage counts), time to first token, inter-token
latency (the gap between streamed chunks that carry text, as vLLM's ``bench serve`` defines it), TPOT
((latency - TTFT) / (output tokens - 1)) and end-to-end latency. Each prompt is exactly ``--prompt-tokens``
tokens (sent as token ids) and each request generates exactly ``--max-tokens`` tokens (``ignore_eos``).

The peer, measured in the same run when the bench starts the server itself (``--model``): the same requests
through the engine alone, in this process, with no HTTP, JSON or client, at the same concurrency levels; the ratio
says what the service around the engine costs. Bounded in count (``--requests`` per level) and time
(``--time-limit`` per level). Prints one JSON object per measurement, then a summary with the ratios between
them (16 against 1 concurrent streams; cache hits against cold; the streams during a long prefill against
otherwise). The goals those ratios are held to are stated in the README beside the figures.

    python bench/serve.py --model path/to/model            # starts `spikegpt serve` on a free local port
    python bench/serve.py --model bundled                  # the bundled model
    python bench/serve.py --url http://127.0.0.1:8000      # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass, field

import httpx
from common import emit, percentiles

from spikegpt.serve.testing import ServerProcess

PROMPT_TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief.\n"
)


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class Result:
    ttft: float | None = None
    latency: float = 0.0
    output_tokens: int = 0
    chunk_gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    start: float = 0.0  # perf_counter at the request's start; token_times are absolute perf_counter readings
    token_times: list[float] = field(default_factory=list)


def _chunk_text(choice: dict) -> str:
    return choice["text"] if "text" in choice else choice.get("delta", {}).get("content") or ""


async def one_request(client: httpx.AsyncClient, body: dict, path: str = "/v1/completions") -> Result:
    result = Result()
    start = last = result.start = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as response:
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
                usage = chunk.get("usage")
                if usage:
                    result.output_tokens = usage["completion_tokens"]
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                text = _chunk_text(chunk["choices"][0]) if chunk["choices"] else ""
                if text:
                    result.text += text
                    now = time.perf_counter()
                    result.token_times.append(now)
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
        **cache_hits(ok),
    }


def cache_hits(results: list[Result]) -> dict:
    """The server's own account of prompt caching: the share of requests that started from a cached state, and
    the share of prompt tokens that were not recomputed (``usage.prompt_tokens_details.cached_tokens``)."""
    prompt = sum(r.prompt_tokens for r in results)
    return {
        "cache_request_hit_rate": sum(r.cached_tokens > 0 for r in results) / max(1, len(results)),
        "cache_token_hit_rate": sum(r.cached_tokens for r in results) / max(1, prompt),
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

    from spikegpt.hub.checkpoint import load_model
    from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
    from spikegpt.runtime.sampling import SamplingParams

    torch.set_num_threads(threads)
    loaded, tokenizer = load_model(model, device or "cpu")
    config = EngineConfig(max_batch=max(levels), compile=compile, decode=decode or EngineConfig.decode)
    engine = Engine(loaded, tokenizer, config)
    for _ in generate(engine, [GenerationRequest("warm-up", ids, SamplingParams(max_tokens=4))]):
        pass  # compiles, with --compile
    for concurrency in levels:
        pending = [
            GenerationRequest(f"r{i}", ids, SamplingParams(max_tokens=max_tokens, seed=i, ignore_eos=True))
            for i in range(requests)
        ]
        start = time.perf_counter()
        finals = [e for events in generate(engine, pending, concurrency) for e in events if e.finish_reason]
        tokens = sum(event.completion_tokens for event in finals)
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


QUESTIONS = [
    "What light breaks through yonder window?",
    "Who is already sick and pale with grief?",
    "Why should the fair sun kill the envious moon?",
    "Where does Juliet stand tonight?",
    "How long shall the night endure?",
    "What says the nurse of Romeo?",
    "When will the lovers meet again?",
    "Which house is Tybalt of?",
    "What is in a name?",
    "Is the east not Juliet?",
]


def _text_ids(client: httpx.Client, text: str) -> list[int]:
    response = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
    response.raise_for_status()
    return response.json()["tokens"]


def _stream_body(prompt, max_tokens: int, seed: int, **extra) -> dict:
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def _client(url: str, api_key: str | None, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, headers=_auth(api_key), limits=limits, timeout=httpx.Timeout(300.0))


def _scenario_record(name: str, results: list[Result], duration: float, **extra) -> dict:
    ok = [r for r in results if r.error is None]
    return {
        "measurement": "serve_scenario",
        "scenario": name,
        **extra,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:3],
        "ttft_ms": percentiles([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": percentiles([gap for r in ok for gap in r.chunk_gaps]),
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / duration,
        **cache_hits(ok),
    }


async def shared_prefix(url: str, api_key: str | None, system: list[int], questions: list[list[int]]) -> dict:
    """One request with a 2,000-token system prompt (cold: nothing cached yet), then one question at a time after
    the same system prompt: with the cache each starts from the system prompt's state."""
    async with _client(url, api_key, 1) as client:
        start = time.perf_counter()
        results = []
        for i, question in enumerate(questions):
            results.append(await one_request(client, _stream_body(system + question, 16, 500 + i)))
        duration = time.perf_counter() - start
    cold, hits = results[0], results[1:]
    record = _scenario_record("shared_prefix", results, duration, system_tokens=len(system), questions=len(hits))
    record["ttft_cold_ms"] = cold.ttft * 1000 if cold.ttft is not None else None
    record["ttft_after_ms"] = percentiles([r.ttft for r in hits if r.ttft is not None])
    if cold.ttft and record["ttft_after_ms"]:
        record["ttft_after_over_cold"] = record["ttft_after_ms"]["p50"] / record["ttft_cold_ms"]
    return record


async def chat(url: str, api_key: str | None, system: str, turns: int, max_tokens: int) -> dict:
    """An ``turns``-turn conversation through /v1/chat/completions: each turn sends the whole conversation so far
    (the model's earlier replies included) and one new question."""
    messages = [{"role": "system", "content": system}]
    results = []
    async with _client(url, api_key, 1) as client:
        start = time.perf_counter()
        for turn in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            body = {"messages": messages, "seed": 900 + turn, "stop": None, **_stream_body(None, max_tokens, 0)}
            body.pop("prompt")
            body["seed"] = 900 + turn
            result = await one_request(client, body, "/v1/chat/completions")
            results.append(result)
            messages.append({"role": "assistant", "content": result.text})
        duration = time.perf_counter() - start
    record = _scenario_record("chat", results, duration, turns=turns)
    ttfts = [r.ttft * 1000 if r.ttft is not None else None for r in results]
    record["ttft_by_turn_ms"] = ttfts
    record["prompt_tokens_by_turn"] = [r.prompt_tokens for r in results]
    record["cached_tokens_by_turn"] = [r.cached_tokens for r in results]
    if ttfts[0] and ttfts[-1]:
        record["ttft_last_over_first"] = ttfts[-1] / ttfts[0]
    return record


async def long_prompt(
    url: str, api_key: str | None, short: list[int], long: list[int], streams: int, stream_tokens: int
) -> dict:
    """``streams`` streams decoding, then one long prompt arriving: the streams' inter-token latency while it is
    prefilled (from its arrival to its first token) against the rest of their run."""
    async with _client(url, api_key, streams + 1) as client:
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(one_request(client, _stream_body(short, stream_tokens, 700 + i)))
            for i in range(streams)
        ]
        await asyncio.sleep(1.0)  # the streams are admitted and decoding
        long_result = await one_request(client, _stream_body(long, 8, 799))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    window = (long_result.start, long_result.start + (long_result.ttft or 0.0))
    inside, outside = [], []
    for r in results:
        for before, after in itertools.pairwise(r.token_times):
            (inside if window[0] <= after <= window[1] else outside).append(after - before)
    record = _scenario_record("long_prompt", results, duration, streams=streams, long_prompt_tokens=len(long))
    record["long_ttft_ms"] = long_result.ttft * 1000 if long_result.ttft is not None else None
    record["long_error"] = long_result.error
    record["itl_during_prefill_ms"] = percentiles(inside)
    record["itl_otherwise_ms"] = percentiles(outside)
    if inside and outside:
        record["itl_p99_during_over_p50_otherwise"] = percentiles(inside)["p99"] / percentiles(outside)["p50"]
    return record


def run_scenarios(url: str, args, label: str) -> dict:
    with httpx.Client(base_url=url, headers=_auth(args.api_key), timeout=30) as client:
        verse = prompt_ids(url, 4100, args.api_key)
        system = verse[: args.system_tokens]
        questions = [_text_ids(client, "\n\nQUESTION: " + q + "\nANSWER:") for q in QUESTIONS[: args.questions + 1]]
    records = {}
    if "shared_prefix" in args.scenarios:
        records["shared_prefix"] = asyncio.run(shared_prefix(url, args.api_key, system, questions))
    if "chat" in args.scenarios:
        records["chat"] = asyncio.run(chat(url, args.api_key, PROMPT_TEXT.strip(), args.chat_turns, 48))
    if "long_prompt" in args.scenarios:
        long = verse[37 : 37 + args.long_tokens]  # not a prefix of the streams' prompt
        records["long_prompt"] = asyncio.run(long_prompt(url, args.api_key, verse[:64], long, 15, args.stream_tokens))
    for record in records.values():
        record["cache"] = label
        emit(record)
    return records


def run_levels(url: str, args, label: str) -> tuple[dict, list[int], str]:
    ids = prompt_ids(url, args.prompt_tokens, args.api_key)
    model_name = httpx.get(url + "/v1/models", headers=_auth(args.api_key), timeout=30).json()["data"][0]["id"]
    by_level = {}
    for n, concurrency in enumerate(args.concurrency):
        count = args.requests or max(16, 4 * concurrency)
        # warm-up: one request, so that the first measured one pays no first-call costs
        asyncio.run(run_level(url, request_bodies(ids, 1, 8, 10**6), 1, None, args.time_limit, args.api_key))
        bodies = request_bodies(ids, count, args.max_tokens, n * 10_000)
        results, duration = asyncio.run(run_level(url, bodies, concurrency, args.rate, args.time_limit, args.api_key))
        record = summarize(
            results,
            duration,
            model=model_name,
            cache=label,
            concurrency=concurrency,
            rate=args.rate,
            prompt_tokens=args.prompt_tokens,
            max_tokens=args.max_tokens,
        )
        by_level[concurrency] = record
        emit(record)
    return by_level, ids, model_name


def ratios(by_level: dict, scenarios: dict) -> dict:
    """The ratios one server's measurements are judged by (the README states the goals beside the figures)."""
    out = {}
    if 1 in by_level and 16 in by_level:
        low, high = by_level[1], by_level[16]
        if low["output_tokens_per_s"]:
            out["tokens_per_s_ratio_16_vs_1"] = high["output_tokens_per_s"] / low["output_tokens_per_s"]
        if low["ttft_ms"] and high["ttft_ms"]:
            out["ttft_p50_ratio_16_vs_1"] = high["ttft_ms"]["p50"] / low["ttft_ms"]["p50"]
            out["ttft_p50_ms_concurrency_1"] = low["ttft_ms"]["p50"]
    for scenario, ratio in (
        ("shared_prefix", "ttft_after_over_cold"),
        ("chat", "ttft_last_over_first"),
        ("long_prompt", "itl_p99_during_over_p50_otherwise"),
    ):
        if ratio in scenarios.get(scenario, {}):
            out[f"{scenario}_{ratio}"] = scenarios[scenario][ratio]
    return out


SCENARIOS = ("shared_prefix", "chat", "long_prompt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", metavar="DIR|HUB_ID|bundled", help="start `spikegpt serve` with this model")
    parser.add_argument(
        "--concurrency", type=int, nargs="*", default=[1, 4, 16], help="levels (default: 1 4 16; none: skip them)"
    )
    parser.add_argument("--rate", type=float, default=None, help="Poisson arrivals, requests/s (default: none)")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per level (default: 4x concurrency, at least 16)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (default: 64)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request (default: 128)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per level (default: 120)")
    parser.add_argument(
        "--scenarios", nargs="*", choices=SCENARIOS, default=list(SCENARIOS), help="(default: all; none: skip them)"
    )
    parser.add_argument("--system-tokens", type=int, default=2000, help="shared_prefix: system prompt (default: 2000)")
    parser.add_argument("--questions", type=int, default=8, help="shared_prefix: questions after the cold one (8)")
    parser.add_argument("--chat-turns", type=int, default=8, help="chat: turns (default: 8)")
    parser.add_argument("--long-tokens", type=int, default=4000, help="long_prompt: its length (default: 4000)")
    parser.add_argument(
        "--stream-tokens", type=int, default=800, help="long_prompt: tokens each of the 15 streams generates (800)"
    )
    parser.add_argument(
        "--cache",
        choices=("both", "on", "off"),
        default="both",
        help="with --model: run everything with the state cache on (the server's default), off, or both (default)",
    )
    parser.add_argument("--threads", type=int, default=1, help="server's model threads with --model (default: 1)")
    parser.add_argument("--compile", action="store_true", help="with --model: serve with --compile (and the peer)")
    parser.add_argument("--device", default=None, help="with --model: the server's (and the peer's) device")
    parser.add_argument(
        "--decode", default=None, choices=["auto", "dense", "sparse"], help="with --model: serve with --decode"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the engine-only peer (with --model)")
    parser.add_argument("--server-arg", action="append", default=[], help="with --model: one more `serve` argument")
    parser.add_argument("--api-key", default=None, help="bearer key of the server, if it has one")
    args = parser.parse_args(argv)

    model = None if args.model in (None, "bundled") else args.model
    if args.url is not None:
        runs = [("server's setting", None)]
    else:
        runs = [(label, flags) for label, flags in (("on", []), ("off", ["--state-cache-mb", "0"]))]
        runs = [run for run in runs if args.cache in ("both", run[0])]
    summary = {"measurement": "serve_summary"}
    ids, model_name = None, None
    for label, flags in runs:
        server = None
        if flags is not None:
            extra = ["--max-batch", str(max([16, *args.concurrency])), "--max-tokens-cap", "100000", *flags]
            extra += (["--compile"] if args.compile else []) + args.server_arg
            extra += ["--device", args.device] if args.device else []
            extra += ["--decode", args.decode] if args.decode else []
            extra += ["--model", model] if model is not None else []
            server = ServerProcess(*extra, threads=args.threads, echo_errors=True)
        try:
            url = args.url or server.wait_ready()
            by_level = {}
            if args.concurrency:
                by_level, ids, model_name = run_levels(url, args, label)
            scenarios = run_scenarios(url, args, label) if args.scenarios else {}
        finally:
            if server is not None:
                server.stop(grace=60)
        summary[f"cache_{label}" if flags is not None else "server"] = ratios(by_level, scenarios)
    if args.model is not None and not args.no_peer and ids is not None:
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
    summary["model"] = model_name
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
