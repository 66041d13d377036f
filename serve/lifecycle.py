"""``RequestLife``: one generation request from its arrival to its outcome, and the one place where that request's
metrics are updated (its outcome, its tokens' latencies, its finished sequences, its tokens and energy).

The route creates it when the request arrives; the engine worker reports each of the request's engine events to
it as they are delivered (time to first token, inter-token latency, finish reasons); the handler reports how the
request ended. The outcome is counted once, whichever of them sees the end first.
"""

from __future__ import annotations

import logging
import time

from spikegpt.runtime.engine import GenerationEvent

from .errors import APIError
from .metrics import ModelMetrics

logger = logging.getLogger(__name__)


class RequestLife:
    def __init__(self, metrics: ModelMetrics, endpoint: str):
        self.metrics = metrics
        self.endpoint = endpoint
        self.arrival = time.monotonic()  # TTFT counts from here: reading, validation and tokenization included
        self.outcome: str | None = None
        self._last_token_at: dict[str, float] = {}

    def observe(self, event: GenerationEvent, now: float) -> None:
        """An engine event of one of the request's sequences, as it is delivered."""
        if event.token is not None:
            last = self._last_token_at.get(event.request_id)
            if last is None:
                self.metrics.ttft.observe(now - self.arrival)
            else:
                self.metrics.itl.observe(now - last)
            self._last_token_at[event.request_id] = now
        if event.finish_reason is not None:
            self._last_token_at.pop(event.request_id, None)
            self.metrics.sequence_finished(event.finish_reason)

    def answered(self, prompt_tokens: int, completion_tokens: int, energy: dict) -> None:
        """The whole answer is ready: its tokens, latency, firing rate and energy count (the outcome, "success",
        once it has been sent)."""
        self.metrics.generation_done(prompt_tokens, completion_tokens, time.monotonic() - self.arrival, energy)

    def failed(self, error: APIError) -> None:
        """The request ends with an error answer: 429 is "rejected", another 4xx "invalid", a 5xx "error"."""
        if error.status == 429:
            self.end("rejected")
        else:
            self.end("invalid" if error.status < 500 else "error")

    def cancelled(self, when: str) -> None:
        """The client went away (``when``: while doing what): a cancellation, one line in the log."""
        if self.outcome is None:
            logger.info("%s request cancelled: the client left %s", self.endpoint, when)
        self.end("cancelled")

    def end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.metrics.request_done(self.endpoint, outcome)
