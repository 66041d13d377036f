"""The engine's thread and the bridge to asyncio: handlers submit sequences and read their events from a queue.

One thread owns the engine (the model and every state); HTTP handlers never touch tensors. After each engine step
the thread hands that step's events to the event loop in one call, where they are sorted into each request's
``asyncio.Queue``. The number of sequences in the server (running plus waiting) is bounded: past
``max_batch + max_queue`` a submission is refused, which the API answers with 429.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from spikegpt.runtime.engine import Engine, GenerationEvent, GenerationRequest

from .lifecycle import RequestLife
from .metrics import ModelMetrics

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """No room for the sequences: every slot is running and the queue is full."""


class ShuttingDownError(Exception):
    """The server is shutting down and takes no new work."""


class Submission:
    """The sequences of one HTTP request inside the engine; their events arrive on ``events`` in order."""

    def __init__(self, requests: list[GenerationRequest], life: RequestLife):
        self.ids = [r.request_id for r in requests]
        self.life = life
        self.events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self.unfinished = set(self.ids)


class EngineWorker:
    def __init__(self, engine: Engine, max_queue: int, metrics: ModelMetrics):
        self.engine = engine
        self.capacity = engine.config.max_batch + max_queue
        self.metrics = metrics
        self.accepting = True
        self._outstanding = 0  # sequences submitted and not yet finished (event-loop side)
        self._submissions: dict[str, Submission] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="spikegpt-engine", daemon=True)

    # -- event-loop side --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def submit(self, requests: list[GenerationRequest], life: RequestLife) -> Submission:
        """Queue the sequences of one (validated) request. Raises QueueFullError or ShuttingDownError before
        anything is queued."""
        if not self.accepting:
            raise ShuttingDownError()
        if self._outstanding + len(requests) > self.capacity:
            raise QueueFullError()
        submission = Submission(requests, life)
        for request in requests:
            self._submissions[request.request_id] = submission
            self.engine.submit(request)
        self._outstanding += len(requests)
        self._wake.set()
        return submission

    def abort(self, submission: Submission) -> None:
        """Cancel the request's unfinished sequences, queued or running; their slots free at the next step."""
        for request_id in submission.unfinished:
            self.engine.abort(request_id)
        self._wake.set()

    def abort_all(self) -> None:
        for submission in set(self._submissions.values()):
            self.abort(submission)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def _deliver(self, events: list[GenerationEvent]) -> None:
        now = time.monotonic()
        for event in events:
            submission = self._submissions.get(event.request_id)
            if submission is None:
                continue
            submission.life.observe(event, now)
            if event.finish_reason is not None:
                del self._submissions[event.request_id]
                submission.unfinished.discard(event.request_id)
                self._outstanding -= 1
            submission.events.put_nowait(event)

    async def stop(self, timeout: float = 10.0) -> None:
        """Abort everything still in the engine, let the aborts reach their handlers, then end the thread."""
        self.accepting = False
        self.abort_all()
        deadline = time.monotonic() + timeout
        while self._outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, timeout)

    # -- engine thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            if not engine.has_work():
                # background prefill (cache entries of finished sequences) waits for the engine to be idle
                self._wake.wait(timeout=0.05 if engine.has_background else None)
                self._wake.clear()
                continue
            try:
                events = engine.step()
            except Exception:  # a bug in a step must not stop the server: fail what was in flight, go on
                logger.exception("engine step failed; ending the requests in flight")
                events = engine.fail_all()
            self.metrics.running.set(engine.running)
            self.metrics.waiting.set(engine.waiting)
            if events:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, events)
                except RuntimeError:  # the event loop is closed: nobody is left to deliver to
                    return
