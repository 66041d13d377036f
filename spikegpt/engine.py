"""Batched streaming generation over recurrent-state slots.

The engine owns the model and every sequence's state. Each ``step()``: every running sequence advances by one
token in a single batched recurrent step; then requests that arrived are admitted into free slots and prefilled
with the parallel form (one request at a time, so a prompt's computation never depends on what else is running);
then one batched sampling pass picks the next token of every running and newly admitted sequence. Finished and
aborted sequences leave at once and their slot is reused; a fresh request always starts from a fresh state, so
nothing leaks between requests.

With ``batch_invariant`` (the default) the decoding step and the sampling pass always run all ``max_batch`` rows,
whatever is running: on a CPU a row's result then does not depend on the other rows or on how many there are, so
the same request and seed give the same text alone or under any concurrency. Without it, only the running rows
are decoded (cheaper at low concurrency for large models, but the last bits of a row can change with the batch
size). The step's cost is then mostly fixed (per-operation overhead plus the padded rows), which is why serving
many sequences at once costs little more than serving one.

``decode`` chooses the decoding step's products (``spikegpt.decoding``): dense, event-driven (only the weight rows
of nonzero inputs) or ``auto`` (event-driven below the crossover measured for this machine). On a CPU each row
decides for itself, so batch invariance holds in every mode. Prompts are always read with dense products.

Faults are isolated per request: a failure while admitting, prefilling, sampling or detokenising one request
ends that request alone, with a final event whose finish_reason is "error" and whose ``error`` names the stage
(never the exception's text: that goes to the log); its slot is freed at once. Only a failure of the batched
decoding step ends every sequence in it, each with its final event and its slot back.

``submit`` and ``abort`` may be called from any thread; ``step`` from one thread only.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from spikegpt.kernels import kernel_backend

from .decoding import Crossovers, DecodeProducts, prepare_weights
from .errors import ConfigError
from .int8_kernels import use_int8_kernels_
from .model import SpikeGPTForCausalLM
from .sampling import BatchSampler, SamplingParams, TokenChoice, top_logprobs
from .state import RecurrentState
from .stats import SpikeStats
from .textstream import TextStream
from .tracing import trace_decode_step

logger = logging.getLogger(__name__)

PROMPT_LOGPROBS_CHUNK = 128  # positions whose full-vocabulary logits are held at once for prompt logprobs


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. ``prompt_logprobs`` k (with echo and logprobs) asks for every prompt token's
    log-probability and its k best alternatives, on the first event. ``token_spikes`` asks for every token's
    spikes on its event (one host transfer per step, for the rows that ask)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    prompt_logprobs: int | None = None
    token_spikes: bool = False


@dataclass(frozen=True)
class TokenSpikes:
    """The spikes of the forward pass whose logits a token was sampled from: for the first generated token the
    prompt's pass (``tokens``: the prompt tokens it read), for each later one the step that read the token
    before it (``tokens`` = 1). ``counts``: spikes per site, in the model's site order (``SpikeStats.sites``).
    Summed over a sequence's events they are exactly its final ``stats``."""

    tokens: int
    counts: list[int]


@dataclass
class GenerationEvent:
    """What one step produced for one request.

    text: newly released text (may be empty while a possible stop string is held back).
    token: the token this event is about (None on a final event that carries no token).
    finish_reason: None while running; then "stop" (EOS, stop token or stop string), "length", "abort" or "error".
    stats: on the final event, the spikes of every token the model processed for this request.
    error: with finish_reason "error", the stage that failed ("admit", "prefill", "decode", "sample",
        "detokenize"); the details are in the log.
    prompt_logprobs: on the first event, when asked for: None for the first prompt token, then one choice each.
    spikes: with the request's ``token_spikes``, on every event that carries a token.
    """

    request_id: str
    text: str
    token: TokenChoice | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    stats: SpikeStats | None = None
    error: str | None = None
    prompt_logprobs: list[TokenChoice | None] | None = None
    spikes: TokenSpikes | None = None


class _Sequence:
    def __init__(self, request: GenerationRequest, slot: int, text: TextStream):
        self.request = request
        self.slot = slot
        self.text = text
        self.completion_tokens = 0
        self.prompt_logprobs: list[TokenChoice | None] | None = None
        self.reported: tuple[int, list[int]] | None = None  # with token_spikes: (tokens, counts) reported so far


class Engine:
    def __init__(
        self,
        model: SpikeGPTForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        max_batch: int = 16,
        batch_invariant: bool = True,
        prefill_chunk: int = 1024,
        compile: bool = False,
        decode: str = "auto",
        crossovers: Crossovers | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if compile and not batch_invariant:
            raise ValueError("compile needs batch_invariant: the compiled step has one fixed shape")
        self.model = model.eval()
        self.device = model.head.weight.device
        # A model on the 8-bit grid decodes with int8 weights on a CPU (a quarter of the bytes per token); its
        # products are then the int8 kernel's, so the event-driven ones (which read float rows) stay off.
        int8 = not compile and self.device.type == "cpu" and getattr(model.config, "weight_bits", None) == 8
        if int8 and decode == "sparse":
            raise ConfigError("decode 'sparse' reads float weight rows; an 8-bit model decodes with int8 kernels")
        # dense or event-driven products in the decoding step (decode: auto, dense, sparse); prefill stays dense
        self.products = DecodeProducts(model, "dense" if int8 else decode, max_batch, crossovers)
        prepare_weights(model, decode)
        if int8:
            use_int8_kernels_(model)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.batch_invariant = batch_invariant
        self.prefill_chunk = prefill_chunk
        self.vocab_size = model.config.vocab_size
        self.eos_token_id = tokenizer.eos_token_id
        self.state = model.fresh_state(max_batch)
        self.slots: list[_Sequence | None] = [None] * max_batch
        self.sampler = BatchSampler(max_batch, self.vocab_size, self.device)
        self.logits = torch.zeros(max_batch, self.vocab_size, device=self.device)
        self.next_tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)
        # each row's spike statistics since its prompt, as whole numbers (int64: exact however long it runs)
        whole = dict(dtype=torch.long, device=self.device)
        self.counts = torch.zeros(max_batch, len(model.model.sites), **whole)
        self.reads = torch.zeros(max_batch, len(model.model.projections), 2, **whole)
        self.tokens = torch.zeros(max_batch, **whole)
        self.head_tokens = torch.zeros(max_batch, **whole)  # positions whose logits were computed
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[GenerationRequest] = []
        # The fixed-shape step's hundreds of small operations cost more than its arithmetic on a CPU: compiled,
        # they become a few fused kernels (compiled once, at the first step); traced, TorchScript runs the same
        # operations without Python between them. Either way a row's result still depends on nothing but the row.
        if compile:
            self.decode_step = torch.compile(self._model_step, dynamic=False)
        elif batch_invariant and kernel_backend(self.next_tokens, steps=1) == "torch":
            self.decode_step = trace_decode_step(model, self.next_tokens, self.state, self.products)
        else:
            self.decode_step = self._model_step

    # -- called from any thread -------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; it is admitted at the start of a later step. The server has validated it; a request
        the engine cannot run (an empty prompt, a token outside the vocabulary) ends with an "admit" error."""
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
        ready = [s for s in self.slots if s is not None]
        if ready and not self._decode(ready, events):
            ready = []
        while self._waiting and None in self.slots:
            seq = self._admit(self._waiting.pop(0), events)
            if seq is not None and seq.request.params.max_tokens == 0:  # score-only: done after the prefill
                event = self._finish(seq, "length", None)
                event.prompt_logprobs = seq.prompt_logprobs
                events.append(event)
            elif seq is not None:
                ready.append(seq)
        if ready:
            self._sample(ready, events)
        return events

    def fail_all(self) -> list[GenerationEvent]:
        """End every queued and running request with an error (after an unexpected failure of ``step``)."""
        events: list[GenerationEvent] = []
        self._drain_inbox(events)
        for request in self._waiting:
            events.append(self._rejected(request, "error", "step"))
        self._waiting.clear()
        for seq in self.slots:
            if seq is not None:
                events.append(self._finish(seq, "error", None, error="step"))
        return events

    def _rejected(self, request: GenerationRequest, reason: str, error: str | None = None) -> GenerationEvent:
        return GenerationEvent(request.request_id, "", None, len(request.prompt_ids), 0, reason, error=error)

    def _drain_inbox(self, events: list[GenerationEvent]) -> None:
        while not self._inbox.empty():
            kind, item = self._inbox.get()
            if kind == "submit":
                self._waiting.append(item)
                continue
            for i, request in enumerate(self._waiting):
                if request.request_id == item:
                    del self._waiting[i]
                    events.append(self._rejected(request, "abort"))
                    break
            for seq in self.slots:
                if seq is not None and seq.request.request_id == item:
                    events.append(self._finish(seq, "abort", None))

    def _prefill(self, request: GenerationRequest) -> tuple:
        """Run the prompt with the parallel form: (state, last logits [vocab], stats, prompt logprobs or None)."""
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        want = request.prompt_logprobs
        chunk = min(self.prefill_chunk, PROMPT_LOGPROBS_CHUNK) if want is not None else self.prefill_chunk
        state, stats, logits = None, None, None
        prompt_logprobs: list[TokenChoice | None] = [None]
        for start in range(0, ids.shape[1], chunk):
            piece = ids[:, start : start + chunk]
            out = self.model(
                piece,
                state=state,
                use_cache=True,
                output_spike_stats=True,
                logits_to_keep=0 if want is not None else 1,
            )
            state, logits = out.state, out.logits[0]
            stats = out.spike_stats if stats is None else stats + out.spike_stats
            if want is not None:
                # position t predicts prompt token t + 1 (the last position predicts the first generated token)
                targets = ids[0, start + 1 : start + 1 + piece.shape[1]]
                scored = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
                values, tops = top_logprobs(scored, targets, want)
                prompt_logprobs += [
                    TokenChoice(t, v, top) for t, v, top in zip(targets.tolist(), values, tops, strict=True)
                ]
        return state, logits[-1], stats, prompt_logprobs if want is not None else None

    def _admit(self, request: GenerationRequest, events: list[GenerationEvent]) -> _Sequence | None:
        """Prefill ``request`` into a free slot; on any failure it alone ends with an error and the slot stays free."""
        slot = self.slots.index(None)
        stage = "admit"
        try:
            if not request.prompt_ids or not all(0 <= t < self.vocab_size for t in request.prompt_ids):
                raise ValueError(f"prompt token ids must be a non-empty list in [0, {self.vocab_size})")
            stage = "prefill"
            state, logits, stats, prompt_logprobs = self._prefill(request)
            stage = "admit"
            self.state.write_rows([slot], state)
            self.logits[slot] = logits
            self.counts[slot] = stats.counts[0]
            self.reads[slot] = stats.reads[0]
            self.tokens[slot] = stats.tokens[0]
            self.head_tokens[slot] = stats.head_tokens[0]
            self.sampler.start(slot, request.params, request.prompt_ids)
            seq = _Sequence(request, slot, TextStream(self.tokenizer, request.params.stop))
        except Exception:  # one bad request must not stop the others
            logger.exception("%s failed for request %s", stage, request.request_id)
            self.sampler.release(slot)
            events.append(self._rejected(request, "error", stage))
            return None
        seq.prompt_logprobs = prompt_logprobs
        self.slots[slot] = seq
        return seq

    def _decode(self, running: list[_Sequence], events: list[GenerationEvent]) -> bool:
        """One recurrent step for the running sequences; on failure they all end with an error (returns False)."""
        rows = None if self.batch_invariant else torch.tensor([s.slot for s in running], device=self.device)
        try:
            if rows is None:
                logits, self.state, (counts, reads) = self.decode_step(self.next_tokens, self.state)
                self.logits.copy_(logits)
                self.counts += counts
                self.reads += reads
                self.tokens += 1
                self.head_tokens += 1
            else:
                logits, state, (counts, reads) = self._model_step(self.next_tokens[rows], self.state.select(rows))
                self.state.write_rows(rows, state)
                self.logits[rows] = logits.float()
                self.counts[rows] += counts
                self.reads[rows] += reads
                self.tokens[rows] += 1
                self.head_tokens[rows] += 1
        except Exception:  # the batched step itself: every sequence in it ends
            logger.exception("decoding step failed; ending the %d sequences in it", len(running))
            for seq in running:
                events.append(self._finish(seq, "error", None, error="decode"))
            return False
        return True

    def _model_step(self, tokens: torch.Tensor, state: RecurrentState) -> tuple:
        """One recurrent step: (last logits [B, vocab], new state, (spike counts [B, sites], reads))."""
        with self.products:
            out = self.model(tokens, state=state, output_spike_stats=True)
        return out.logits[:, -1], out.state, (out.spike_stats.counts, out.spike_stats.reads)

    def _sample(self, ready: list[_Sequence], events: list[GenerationEvent]) -> None:
        """One batched sampling pass; if it fails, each sequence is sampled alone with the same random numbers (a
        row's result never depends on the others), so only a sequence that fails by itself ends."""
        slots = [s.slot for s in ready]
        uniforms = self.sampler.draw(slots)
        spikes = self._token_spikes(ready)
        try:
            tokens, choices = self.sampler.sample(self.logits, slots, uniforms)
        except Exception:
            logger.exception("batched sampling failed; sampling its %d sequences one by one", len(ready))
        else:
            self.next_tokens[:, 0] = tokens
            for seq, choice in zip(ready, choices, strict=True):
                self._advance(seq, choice, events, spikes.get(seq.slot))
            return
        for seq, uniform in zip(ready, uniforms, strict=True):
            try:
                tokens, (choice,) = self.sampler.sample(self.logits, [seq.slot], [uniform])
            except Exception:
                logger.exception("sampling failed for request %s", seq.request.request_id)
                events.append(self._finish(seq, "error", None, error="sample"))
                continue
            self.next_tokens[seq.slot, 0] = tokens[seq.slot]
            self._advance(seq, choice, events, spikes.get(seq.slot))

    def _token_spikes(self, ready: list[_Sequence]) -> dict[int, TokenSpikes]:
        """The spikes since the last report of each sequence that asks for them, by slot: the difference of its
        running totals, so that what is reported always adds up to the final statistics."""
        asking = [seq for seq in ready if seq.request.token_spikes]
        if not asking:
            return {}
        rows = [seq.slot for seq in asking]
        # the counters are int64 (exact however long a sequence runs); one tensor, one transfer
        flat = torch.cat([self.counts[rows], self.tokens[rows, None]], dim=1).tolist()
        out = {}
        for seq, (*counts, tokens) in zip(asking, flat, strict=True):
            old_tokens, old_counts = seq.reported or (0, [0] * len(counts))
            out[seq.slot] = TokenSpikes(tokens - old_tokens, [c - o for c, o in zip(counts, old_counts, strict=True)])
            seq.reported = (tokens, counts)
        return out

    def _advance(
        self, seq: _Sequence, choice: TokenChoice, events: list[GenerationEvent], spikes: TokenSpikes | None = None
    ) -> None:
        """Take the sequence's next token (and the spikes that led to it) and decide whether it is finished."""
        params = seq.request.params
        seq.completion_tokens += 1
        try:
            is_eos = choice.token_id == self.eos_token_id and not params.ignore_eos
            if is_eos or choice.token_id in params.stop_token_ids:
                event = self._finish(seq, "stop", choice)
            else:
                text = seq.text.push(choice.token_id)
                if seq.text.stopped:
                    event = self._finish(seq, "stop", choice, text)
                elif seq.completion_tokens >= params.max_tokens:
                    event = self._finish(seq, "length", choice, text)
                else:
                    request = seq.request
                    event = GenerationEvent(
                        request.request_id, text, choice, len(request.prompt_ids), seq.completion_tokens
                    )
        except Exception:
            logger.exception("detokenizing failed for request %s", seq.request.request_id)
            if self.slots[seq.slot] is seq:
                events.append(self._finish(seq, "error", None, error="detokenize"))
            return
        event.prompt_logprobs, seq.prompt_logprobs = seq.prompt_logprobs, None
        event.spikes = spikes
        events.append(event)

    def _finish(
        self, seq: _Sequence, reason: str, choice: TokenChoice | None, text: str = "", error: str | None = None
    ) -> GenerationEvent:
        """End the sequence: free its slot and, when it ended normally (EOS, stop token or string, length), release
        the text held back for a possible stop string."""
        if reason in ("stop", "length"):
            text += seq.text.finish()
        self.slots[seq.slot] = None
        self.sampler.release(seq.slot)
        row = slice(seq.slot, seq.slot + 1)
        stats = SpikeStats(
            counts=self.counts[row].clone(),
            tokens=self.tokens[row].clone(),
            sites=self.model.model.sites,
            n_embd=self.model.config.n_embd,
            reads=self.reads[row].clone(),
            projections=self.model.model.projections,
            head_tokens=self.head_tokens[row].clone(),
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
