"""One generation request from submission to the last byte: streamed as SSE or answered as one JSON body.

``Job`` holds the request's sequences (n per prompt) and how to shape them; ``Generation`` is its time in the
engine: it submits the sequences, hands their events over in batches (everything that arrived since the last
look, so a slow client gets fewer, larger chunks instead of a growing backlog), and cancels whatever is unfinished
when it ends early, whether because the client went away (watched on the ASGI channel, queued requests included)
or because the handler stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from spikegpt.energy import energy_field
from spikegpt.modeling.stats import SpikeStats
from spikegpt.runtime.engine import GenerationEvent, GenerationRequest
from spikegpt.runtime.sampling import SamplingParams

from .errors import APIError, ClientDisconnectedError, server_error, shutting_down
from .formats import ChatFormat, Choice, CompletionFormat, token_spikes
from .host import ModelHost
from .lifecycle import RequestLife
from .worker import QueueFullError, ShuttingDownError

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


@dataclass
class Prompt:
    ids: list[int]
    echo: str | None  # the prompt's text, when it is to be echoed
    unknown: int = 0  # characters of the prompt's text the vocabulary cannot spell (each one unknown token)


class Job:
    """The sequences of one request and everything needed to answer it: ``prompts``, each answered by one choice
    per entry of ``params_for_choice``; ``logprobs`` (k best alternatives per token, or None) and, with
    ``prompt_logprobs``, the echoed prompts' log-probabilities too; the usage chunk and spikes when asked for."""

    def __init__(
        self,
        *,
        host: ModelHost,
        fmt: CompletionFormat | ChatFormat,
        life: RequestLife,
        prompts: list[Prompt],
        params_for_choice: list[SamplingParams],
        logprobs: int | None,
        include_usage: bool,
        prompt_logprobs: bool = False,
        include_spikes: bool = False,
    ):
        self.host = host
        self.fmt = fmt
        self.life = life
        self.include_usage = include_usage
        self.include_spikes = include_spikes
        self.wants_logprobs = logprobs is not None
        self.id = fmt.id_prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.prompt_tokens = sum(len(p.ids) for p in prompts)
        self.unknown_characters = sum(p.unknown for p in prompts)
        self.requests: list[GenerationRequest] = []
        self.choices: dict[str, Choice] = {}
        self.prompt_of: dict[str, int] = {}  # request id -> index of its prompt
        self.answered_energy: dict | None = None  # the "energy" field, once the answer is complete
        n = len(params_for_choice)
        for p_index, prompt in enumerate(prompts):
            for c, params in enumerate(params_for_choice):
                request_id = f"{self.id}-{p_index * n + c}"
                want_prompt = logprobs if prompt_logprobs and prompt.echo is not None else None
                self.requests.append(GenerationRequest(request_id, prompt.ids, params, want_prompt, include_spikes))
                self.choices[request_id] = Choice(p_index * n + c, request_id, prompt.ids, prompt.echo)
                self.prompt_of[request_id] = p_index

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the prefix-state cache, as OpenAI counts them: once per prompt (like
        ``prompt_tokens``), the least that any of its choices found."""
        per_prompt: dict[int, int] = {}
        for request_id, choice in self.choices.items():
            p = self.prompt_of[request_id]
            per_prompt[p] = min(per_prompt.get(p, choice.cached_tokens), choice.cached_tokens)
        return sum(per_prompt.values())

    def usage(self) -> dict:
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "unknown_characters": self.unknown_characters,  # of the prompt: each became the unknown token
        }

    def energy(self) -> dict:
        stats = [c.stats for c in self.choices.values() if c.stats is not None]
        host = self.host
        cached = sum(c.cached_tokens for c in self.choices.values())  # every sequence's, as the stats are
        generated, profile = self.completion_tokens, host.energy_profile
        return energy_field(SpikeStats.stack(stats), host.config, generated, profile, cached_prompt_tokens=cached)

    def envelope(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.host.model_name}

    def failure(self) -> APIError | None:
        """Why the request could not complete: a sequence failed, or the server ended it while shutting down (the
        only other source of an abort is this request's own cancellation, which never reaches here)."""
        for choice in self.choices.values():
            if choice.finish_reason == "error":  # the details are in the log; the client learns the stage only
                return server_error(f"generation failed (stage: {choice.error}); see the server's log")
            if choice.finish_reason == "abort":
                return shutting_down()
        return None

    def finish(self) -> dict:
        """The "energy" field (kept as ``answered_energy``), with the request's tokens and energy accounted in the
        metrics."""
        energy = self.answered_energy = self.energy()
        self.life.answered(self.prompt_tokens, self.completion_tokens, energy)
        return energy

    def response(self) -> dict:
        """The whole answer of a non-streaming request."""
        choices = sorted(self.choices.values(), key=lambda c: c.index)
        return {
            **self.envelope(self.fmt.object),
            "choices": [self.fmt.final_choice(c, self.wants_logprobs) for c in choices],
            "usage": self.usage(),
            "energy": self.finish(),
        }


class Generation:
    """The job's time in the engine: ``open()`` submits it (raising the API error that refuses it), ``batches()``
    yields its events, ``close()`` cancels what is unfinished. A client that goes away cancels it at once, even
    while nobody is reading its events."""

    def __init__(self, job: Job, http_request: Request):
        self.job = job
        self.http_request = http_request
        self.remaining = len(job.requests)

    def open(self) -> Generation:
        worker = self.job.host.worker
        try:
            self.submission = worker.submit(self.job.requests, self.job.life)
        except QueueFullError:
            message = "the server is busy: every batch slot is taken and the queue is full; retry later"
            raise APIError(429, message, "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except ShuttingDownError:
            raise shutting_down() from None
        self._watcher = asyncio.create_task(self._watch_disconnect())
        return self

    async def _watch_disconnect(self) -> None:
        while (await self.http_request.receive())["type"] != "http.disconnect":
            pass
        self.job.host.worker.abort(self.submission)
        self.submission.events.put_nowait(None)

    async def batches(self) -> AsyncIterator[list[GenerationEvent]]:
        queue = self.submission.events
        while self.remaining:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if None in batch:
                raise ClientDisconnectedError()
            self.remaining -= sum(e.finish_reason is not None for e in batch)
            yield batch

    def close(self) -> None:
        self._watcher.cancel()
        if self.submission.unfinished:
            self.job.host.worker.abort(self.submission)


def _by_choice(batch: list[GenerationEvent]) -> dict[str, list[GenerationEvent]]:
    grouped: dict[str, list[GenerationEvent]] = {}
    for event in batch:
        grouped.setdefault(event.request_id, []).append(event)
    return grouped


async def complete(job: Job, generation: Generation) -> dict:
    """Run an opened ``generation`` to the end; the response body. Raises APIError or ClientDisconnectedError."""
    try:
        async for batch in generation.batches():
            for request_id, events in _by_choice(batch).items():
                job.choices[request_id].absorb(events, job.wants_logprobs)
    finally:
        generation.close()
    failure = job.failure()
    if failure is not None:
        raise failure
    return job.response()


async def stream(job: Job, generation: Generation) -> AsyncIterator[str]:
    """The SSE body of an opened ``generation``: chunks as tokens come, the "energy" field on the last chunk
    (the usage chunk with stream_options.include_usage), then ``data: [DONE]``. A failure mid-stream is sent as
    an error event (which OpenAI clients raise) before ``[DONE]``."""
    async with contextlib.aclosing(stream_payloads(job, generation)) as payloads:
        async for batch in payloads:
            yield "".join(sse(payload) for payload in batch)
    if job.life.outcome != "cancelled":
        yield DONE


async def stream_payloads(job: Job, generation: Generation) -> AsyncIterator[list[dict]]:
    """The events of ``stream`` before ``[DONE]``, as payloads, a list per batch of engine events (one SSE write);
    the last is an error body where the request failed. Ends without one where the client left."""
    fmt = job.fmt
    outcome = None  # None at the end: the client left (or the response was cancelled) before it was complete
    try:
        envelope = job.envelope(fmt.chunk_object)
        if job.include_usage:
            envelope["usage"] = None
        starts = [fmt.start_chunk(c) for c in sorted(job.choices.values(), key=lambda c: c.index)]
        if any(starts):
            yield [{**envelope, "choices": starts}]
        async for batch in generation.batches():
            chunks = []
            for request_id, events in _by_choice(batch).items():
                choice = job.choices[request_id]
                text, entries = choice.absorb(events, job.wants_logprobs)
                contents = choice.chunk_contents(events, entries, text)
                if contents is None:
                    continue
                events, entries = contents
                logprobs = entries if job.wants_logprobs else None
                chunk_choice = fmt.chunk_choice(choice, text, logprobs, choice.finish_reason)
                if job.include_spikes:
                    chunk_choice["spikes"] = token_spikes(events)
                chunks.append({**envelope, "choices": [chunk_choice]})
            failure = job.failure()
            if failure is not None:
                outcome = failure
                yield [failure.body()]
                return
            if not generation.remaining:
                energy = job.finish()
                if job.include_usage:
                    chunks.append({**envelope, "choices": [], "usage": job.usage(), "energy": energy})
                else:
                    chunks[-1]["energy"] = energy
            yield chunks
        outcome = "success"
    except ClientDisconnectedError:
        pass
    except Exception:  # a bug here must still end the stream properly
        logger.exception("stream %s failed", job.id)
        outcome = server_error()
        yield [outcome.body()]
    finally:
        generation.close()
        if outcome == "success":
            job.life.end("success")
        elif outcome is None:
            job.life.cancelled(f"during the stream {job.id}")
        else:
            job.life.failed(outcome)
