"""Batched streaming generation over recurrent-state slots.

The engine owns the model and every sequence's state. Each ``step()``: requests that arrived are admitted into
free slots and prefilled with the parallel form (one request at a time, so a prompt's computation never depends
on what else is running), then every running sequence advances by one token in a single batched recurrent step.
Finished and aborted sequences leave at once and their slot is reused; a fresh request always starts from a fresh
state, so nothing leaks between requests.

With ``batch_invariant`` (the default) the decoding step always runs all ``max_batch`` rows, whatever is running:
on a CPU a row's result then does not depend on the other rows or on how many there are, so the same request and
seed give the same text alone or under any concurrency. Without it, only the running rows are computed (cheaper
at low concurrency for large models, but the last bits of a row can change with the batch size).

``submit`` and ``abort`` may be called from any thread; ``step`` from one thread only.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from .errors import GenerationError
from .model import SpikeGPTForCausalLM
from .sampling import Sampler, SamplingParams, TokenChoice
from .stats import SpikeStats
from .textstream import TextStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class GenerationEvent:
    """What one step produced for one request.

    text: newly released text (may be empty while a possible stop string is held back).
    token: the token this event is about (None on a final event that carries no token).
    finish_reason: None while running; then "stop" (EOS, stop token or stop string), "length", "abort" or "error".
    stats: on the final event, the spikes of every token the model processed for this request.
    """

    request_id: str
    text: str
    token: TokenChoice | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    stats: SpikeStats | None = None
    error: str | None = None


class _Sequence:
    def __init__(self, request: GenerationRequest, slot: int, sampler: Sampler, text: TextStream):
        self.request = request
        self.slot = slot
        self.sampler = sampler
        self.text = text
        self.completion_tokens = 0
        self.last_token = 0


class Engine:
    def __init__(
        self,
        model: SpikeGPTForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        max_batch: int = 16,
        batch_invariant: bool = True,
        prefill_chunk: int = 1024,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.batch_invariant = batch_invariant
        self.prefill_chunk = prefill_chunk
        self.device = model.head.weight.device
        self.vocab_size = model.config.vocab_size
        self.eos_token_id = tokenizer.eos_token_id
        self.state = model.fresh_state(max_batch)
        self.slots: list[_Sequence | None] = [None] * max_batch
        self.counts = torch.zeros(max_batch, len(model.model.sites), device=self.device)
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[GenerationRequest] = []

    # -- called from any thread -------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; it is admitted at the start of a later step. Raises GenerationError if invalid."""
        if not request.prompt_ids:
            raise GenerationError("the prompt is empty: give at least one token", param="prompt")
        if any(not 0 <= t < self.vocab_size for t in request.prompt_ids):
            raise GenerationError(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        self._inbox.put(("submit", request))

    def abort(self, request_id: str) -> None:
        """Cancel a request, queued or running; its final event has finish_reason "abort"."""
        self._inbox.put(("abort", request_id))

    # -- called from the engine's thread ----------------------------------------------------------------------
    @property
    def running(self) -> int:
        return sum(s is not None for s in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return self.running > 0 or bool(self._waiting) or not self._inbox.empty()

    @torch.inference_mode()
    def step(self) -> list[GenerationEvent]:
        events: list[GenerationEvent] = []
        self._drain_inbox(events)
        decoding = [s for s in self.slots if s is not None]
        while self._waiting and None in self.slots:
            self._admit(self._waiting.pop(0), events)
        if decoding:
            self._decode(decoding, events)
        return events

    def _drain_inbox(self, events: list[GenerationEvent]) -> None:
        while not self._inbox.empty():
            kind, item = self._inbox.get()
            if kind == "submit":
                self._waiting.append(item)
                continue
            for i, request in enumerate(self._waiting):
                if request.request_id == item:
                    del self._waiting[i]
                    events.append(GenerationEvent(item, "", None, len(request.prompt_ids), 0, "abort"))
                    break
            for seq in self.slots:
                if seq is not None and seq.request.request_id == item:
                    events.append(self._finish(seq, "abort", None))

    def _admit(self, request: GenerationRequest, events: list[GenerationEvent]) -> None:
        slot = self.slots.index(None)
        try:
            ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
            state, logits, stats = None, None, None
            for start in range(0, ids.shape[1], self.prefill_chunk):
                out = self.model(
                    ids[:, start : start + self.prefill_chunk],
                    state=state,
                    use_cache=True,
                    output_spike_stats=True,
                    logits_to_keep=1,
                )
                state, logits = out.state, out.logits
                stats = out.spike_stats if stats is None else stats + out.spike_stats
            sampler = Sampler(request.params, self.vocab_size, request.prompt_ids, self.device)
        except Exception as e:  # one bad request must not stop the others
            logger.exception("prefill failed for request %s", request.request_id)
            events.append(
                GenerationEvent(request.request_id, "", None, len(request.prompt_ids), 0, "error", error=str(e))
            )
            return
        self.state.write_rows([slot], state)
        self.counts[slot] = stats.counts[0]
        self.tokens[slot] = stats.tokens[0]
        seq = _Sequence(request, slot, sampler, TextStream(self.tokenizer, request.params.stop))
        self.slots[slot] = seq
        self._advance(seq, logits[0, -1], events)

    def _decode(self, decoding: list[_Sequence], events: list[GenerationEvent]) -> None:
        rows = list(range(self.max_batch)) if self.batch_invariant else [s.slot for s in decoding]
        last = torch.zeros(len(rows), 1, dtype=torch.long, device=self.device)
        position = {row: i for i, row in enumerate(rows)}
        for seq in decoding:
            last[position[seq.slot], 0] = seq.last_token
        state = self.state if self.batch_invariant else self.state.select(rows)
        try:
            out = self.model(last, state=state, output_spike_stats=True)
        except Exception as e:
            logger.exception("decoding step failed")
            for seq in decoding:
                events.append(self._finish(seq, "error", None, error=str(e)))
            return
        if self.batch_invariant:
            self.state = out.state
        else:
            self.state.write_rows(rows, out.state)
        index = torch.tensor(rows, device=self.device)
        self.counts[index] += out.spike_stats.counts
        self.tokens[index] += 1
        for seq in decoding:
            self._advance(seq, out.logits[position[seq.slot], -1], events)

    def _advance(self, seq: _Sequence, logits: torch.Tensor, events: list[GenerationEvent]) -> None:
        """Sample the sequence's next token and decide whether it is finished."""
        params = seq.request.params
        try:
            choice = seq.sampler.sample(logits)
        except Exception as e:
            logger.exception("sampling failed for request %s", seq.request.request_id)
            events.append(self._finish(seq, "error", None, error=str(e)))
            return
        seq.completion_tokens += 1
        seq.last_token = choice.token_id
        is_eos = choice.token_id == self.eos_token_id and not params.ignore_eos
        if is_eos or choice.token_id in params.stop_token_ids:
            events.append(self._finish(seq, "stop", choice))
            return
        text = seq.text.push(choice.token_id)
        if seq.text.stopped:
            events.append(self._finish(seq, "stop", choice, text))
        elif seq.completion_tokens >= params.max_tokens:
            events.append(self._finish(seq, "length", choice, text + seq.text.finish()))
        else:
            events.append(
                GenerationEvent(
                    seq.request.request_id, text, choice, len(seq.request.prompt_ids), seq.completion_tokens
                )
            )

    def _finish(
        self, seq: _Sequence, reason: str, choice: TokenChoice | None, text: str = "", error: str | None = None
    ) -> GenerationEvent:
        self.slots[seq.slot] = None
        stats = SpikeStats(
            counts=self.counts[seq.slot : seq.slot + 1].clone(),
            tokens=self.tokens[seq.slot : seq.slot + 1].clone(),
            sites=self.model.model.sites,
            n_embd=self.model.config.n_embd,
        )
        return GenerationEvent(
            seq.request.request_id,
            text,
            choice,
            len(seq.request.prompt_ids),
            seq.completion_tokens,
            reason,
            stats,
            error,
        )
