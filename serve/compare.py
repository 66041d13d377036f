"""``POST /v1/compare``: one prompt and one seed on two or three served models at once (what the /compare page
sends).

Each model runs the request as a ``/v1/completions`` request with the same fields would run it there (``model``
its name, every token's text and spikes included), in its own engine: a model that refuses it (429: its queue is
full) or fails ends its own run only, with an error that names it. With ``continuation``, each model that ran then
scores that text after the prompt (echo + logprobs, as ``/v1/completions`` does) for its bits per byte. The answer
holds every model's run and the table of their differences, from ``spikegpt.energy.compare`` (which
``spikegpt compare`` prints too, so the page, the API and the command share one definition of every figure).

With ``stream``, the models' chunks interleave as they come (each names its model, as every chunk does), an error
event carries ``"model"`` too, and the table is the last event before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from spikegpt.energy.compare import Run, compare_table
from spikegpt.hub.tokenizer import encode_counting_unknown

from .errors import APIError, ClientDisconnectedError, unsupported_media_type
from .generation import DONE, Generation, Job, complete, sse, stream_payloads
from .host import ModelHost, ModelHosts
from .lifecycle import RequestLife
from .openapi import GENERATION_RESPONSES, json_body
from .protocol import CompareRequest, CompletionRequest, check_prompt_ids, parse_body
from .routes import SSE_HEADERS, completion_job, is_json

router = APIRouter()

RUN, SCORE = "compare", "compare/score"  # the metrics' endpoint labels of a model's run and of its scoring


class Departure:
    """The client's leaving, heard by every generation of one request (each ``Generation`` watches a receive
    channel for it, and one HTTP request's channel delivers it once)."""

    def __init__(self, request: Request):
        self.left = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.left.set()

    async def receive(self) -> dict:
        await self.left.wait()
        return {"type": "http.disconnect"}

    def close(self) -> None:
        self._watcher.cancel()


@dataclass
class Column:
    """One model's part of the comparison: its run, then its scoring of the continuation."""

    host: ModelHost
    job: Job
    continuation: str | None
    scoring: Job | None = None  # with a continuation: the prompt and continuation, echoed with log-probabilities
    scored_tokens: int = 0  # the continuation's tokens, the last of the scoring prompt's
    generation: Generation | None = None  # None: it never started (``error`` says why)
    error: APIError | None = None  # why its run or its scoring did not complete
    continuation_logprobs: list[float] | None = None

    @property
    def name(self) -> str:
        return self.host.model_name

    def run(self) -> Run | None:
        """The inputs of its figures, once its run is complete."""
        if self.job.answered_energy is None:
            return None
        tokens, energy = self.job.completion_tokens, self.job.answered_energy
        return Run(self.name, tokens, energy, self.continuation, self.continuation_logprobs)

    def tagged(self, payload: dict) -> dict:
        """An event of this model's stream: an error body is given the model's name."""
        return {"model": self.name, **payload} if "error" in payload else payload

    def fail(self, error: APIError, life: RequestLife) -> None:
        self.error = error
        life.failed(error)


async def _read(request: Request, hosts: ModelHosts) -> CompareRequest:
    """The validated body; each model it names must be served (404) and every model loaded (503: the body is
    validated against all their limits)."""
    for host in hosts:
        host.require_ready()
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ClientDisconnectedError() from None
    if not is_json(request.headers.get("content-type")):
        raise unsupported_media_type(request.headers.get("content-type"))
    body = parse_body(CompareRequest, raw, hosts.limits)
    for name in body.models:
        hosts.named(name)
    return body


async def _column(host: ModelHost, body: CompareRequest, lives: list[RequestLife]) -> Column:
    """A model's run as its ``/v1/completions`` request, and its scoring request when there is a continuation
    (``lives``: gets the requests' lives, which a refusal ends)."""
    lives.append(life := RequestLife(host.metrics, RUN))
    request = parse_body(CompletionRequest, body.completion_body(host.model_name, body.stream), host.limits)
    column = Column(host, await completion_job(host, request, life), body.continuation)
    if body.continuation is not None:
        lives.append(life := RequestLife(host.metrics, SCORE))
        continuation, _ = encode_counting_unknown(host.tokenizer, body.continuation, add_special_tokens=False)
        prompt = column.job.requests[0].prompt_ids
        ids = check_prompt_ids(prompt + continuation, host.limits, "continuation")
        scoring = {"model": host.model_name, "prompt": ids, "echo": True, "logprobs": 0, "max_tokens": 0}
        request = parse_body(CompletionRequest, json.dumps(scoring).encode(), host.limits)
        column.scoring = await completion_job(host, request, life)
        column.scored_tokens = len(continuation)
    return column


async def _columns(hosts: ModelHosts, body: CompareRequest) -> list[Column]:
    """Every model's column; a request one model refuses (a prompt too long for it) is refused as a whole."""
    lives: list[RequestLife] = []
    try:
        return [await _column(hosts.named(name), body, lives) for name in body.models]
    except APIError as e:
        for life in lives:
            life.failed(e)
        raise


def _open(column: Column, departure: Departure) -> None:
    try:
        column.generation = Generation(column.job, departure).open()
    except APIError as e:  # this model's queue is full, or it is shutting down: the others run on
        column.fail(e, column.job.life)


async def _score(column: Column, departure: Departure) -> None:
    """Score the continuation after the prompt: the log-probabilities of its tokens."""
    if column.scoring is None:
        return
    try:
        await complete(column.scoring, Generation(column.scoring, departure).open())
    except APIError as e:
        column.fail(e, column.scoring.life)
        return
    except ClientDisconnectedError:
        column.scoring.life.cancelled(f"while waiting for {column.scoring.id}")
        return
    column.scoring.life.end("success")
    entries = next(iter(column.scoring.choices.values())).logprobs
    column.continuation_logprobs = [entry.logprob for entry in entries[-column.scored_tokens :]]


def _table(columns: list[Column]) -> dict:
    return compare_table([column.run() for column in columns], [column.name for column in columns])


@router.post("/v1/compare", openapi_extra=json_body(CompareRequest), responses=GENERATION_RESPONSES)
async def compare(request: Request) -> Response:
    """One prompt on two or three served models: each model's run and the table of their differences."""
    hosts: ModelHosts = request.app.state.hosts
    body = await _read(request, hosts)
    columns = await _columns(hosts, body)
    departure = Departure(request)
    for column in columns:
        _open(column, departure)
    if all(column.generation is None for column in columns):  # refused by every model: as one would refuse it
        departure.close()
        raise columns[0].error
    if body.stream:
        return StreamingResponse(_stream(columns, departure), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        await asyncio.gather(*(_complete(column, departure) for column in columns))
    finally:
        departure.close()
    if departure.left.is_set():
        return Response(status_code=204)  # nobody is listening any more
    return JSONResponse(
        {
            "object": "compare",
            "created": int(time.time()),
            "runs": [_run_body(column) for column in columns],
            "table": _table(columns),
        }
    )


async def _complete(column: Column, departure: Departure) -> None:
    if column.generation is None:
        return
    try:
        await complete(column.job, column.generation)
    except APIError as e:
        column.fail(e, column.job.life)
        return
    except ClientDisconnectedError:
        column.job.life.cancelled(f"while waiting for {column.job.id}")
        return
    column.job.life.end("success")
    await _score(column, departure)


def _run_body(column: Column) -> dict:
    """A model's run in the whole answer: its text, usage and energy, or the error that ended it."""
    body: dict = {"model": column.name}
    if column.job.answered_energy is not None:
        choice = next(iter(column.job.choices.values()))
        body.update(text=choice.text, finish_reason=choice.finish_reason, usage=column.job.usage())
        body["energy"] = column.job.answered_energy
    if column.error is not None:
        body["error"] = column.error.body()["error"]
    return body


async def _stream(columns: list[Column], departure: Departure) -> AsyncIterator[str]:
    """The models' events as they come, then the table and ``[DONE]`` (nothing more once the client left)."""
    queue: asyncio.Queue[list[dict] | None] = asyncio.Queue()
    pumps = [asyncio.create_task(_pump(column, departure, queue)) for column in columns]
    try:
        running = len(pumps)
        while running:
            batch = await queue.get()
            if batch is None:
                running -= 1
            elif batch:
                yield "".join(sse(payload) for payload in batch)
        if not departure.left.is_set():
            yield sse(_table(columns)) + DONE
    finally:
        for pump in pumps:
            pump.cancel()
        departure.close()


async def _pump(column: Column, departure: Departure, queue: asyncio.Queue) -> None:
    """One model's stream into the shared queue (None when it is over)."""
    try:
        if column.generation is None:
            await queue.put([column.tagged(column.error.body())])
            return
        async with contextlib.aclosing(stream_payloads(column.job, column.generation)) as payloads:
            async for batch in payloads:
                await queue.put([column.tagged(payload) for payload in batch])
        if column.job.life.outcome == "success":
            await _score(column, departure)
            if column.error is not None:
                await queue.put([column.tagged(column.error.body())])
    finally:
        queue.put_nowait(None)
