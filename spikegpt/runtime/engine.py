"""Batched streaming generation over recurrent-state slots: the engine schedules, its ``ModelRunner`` executes.

The engine decides what runs when, and for whom: admission into the runner's state slots, the prefill schedule,
sampling, the events each request receives and fault isolation; the runner (``spikegpt.runtime.runner``) holds
the slots' states, runs the decoding step over them with its products and keeps each slot's spike statistics.
``EngineConfig`` is the one place the engine's options are defined (the server's settings and the CLI build one),
and ``generate`` the one submit-then-step loop that drives an engine to the end.

Each ``step()``: every running sequence advances by one token in a single batched recurrent step; then requests
that arrived are admitted into free slots, starting from the longest prefix of their prompt in the prefix-state
cache (when there is one); then prompts are read in fixed-shape chunks (``spikegpt.runtime.prefill``: several
prompts per call, one call per step while other sequences are decoding, so a long prompt never stalls them); then
one batched sampling pass picks the next token of every sequence whose prompt is read. A prompt's last few tokens
(fewer than a chunk) go through the decoding step like generated ones. Finished and aborted sequences leave at once
and their slot is reused; a request starts from a fresh state or a cached one, never from another request's, so
nothing leaks between requests.

Bit-exactness: chunks start at absolute multiples of the chunk and always have the shape ``[rows, chunk]``, and
cache entries sit only at chunk boundaries, so a prompt's arithmetic is the same whether its first chunks were
computed or restored; a cache hit gives the same logits, text and log-probabilities as a server without cache.
At the end of a finished sequence, the state at its last chunk boundary is computed again by chunks in the
background (rows no request needs), so the next turn of a conversation hits.

With ``batch_invariant`` (the default) the decoding step and the sampling pass always run all ``max_batch`` rows,
whatever is running: on a CPU a row's result then does not depend on the other rows or on how many there are, so
the same request and seed give the same text alone or under any concurrency. Without it, only the running rows
are decoded (cheaper at low concurrency for large models, but the last bits of a row can change with the batch
size). The step's cost is then mostly fixed (per-operation overhead plus the padded rows), which is why serving
many sequences at once costs little more than serving one.

``decode`` chooses the decoding step's products (``spikegpt.runtime.products``): dense, event-driven (only the weight
rows of nonzero inputs) or ``auto`` (event-driven below the crossover measured for this machine), composed with
int8 ones for a model on the 8-bit grid on a CPU. On a CPU each row decides for itself, so batch invariance holds
in every mode. Prompts are always read with dense products.

Faults are isolated per request: a failure while admitting, prefilling, sampling or detokenising one request
ends that request alone, with a final event whose finish_reason is "error" and whose ``error`` names the stage
(never the exception's text: that goes to the log); its slot is freed at once. A failed prefill call is retried
prompt by prompt (the same shape, so the same bits), so only a prompt that fails by itself fails. Only a failure
of the batched decoding step ends every sequence in it, each with its final event and its slot back.

``submit`` and ``abort`` may be called from any thread; ``step`` from one thread only. The engine reads time
(when to run background work) from its ``clock``, ``time.monotonic`` unless a test gives it another.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from spikegpt.kernels import kernel_backend

from ..errors import ConfigError
from ..modeling.model import SpikeGPTForCausalLM
from ..modeling.state import RecurrentState
from ..modeling.stats import SpikeStats
from ..threads import apply_threads
from .prefill import Prefiller, PrefillTask, aligned
from .products import DEFAULT_DECODE, Crossovers, check_decode_mode
from .runner import ModelRunner
from .sampling import BatchSampler, SamplingParams, TokenChoice, top_logprobs
from .state_cache import StateCache, model_fingerprint
from .textstream import TextStream

logger = logging.getLogger(__name__)

IDLE_PREFILL_CALLS = 8  # prefill calls per step while no sequence is decoding (none waits for the step)
# background tasks run alone only after this long with nothing else to do: in a busy server the next request is
# usually a few milliseconds away, and should not find a call in its way
BACKGROUND_AFTER_IDLE_S = 0.05


@dataclass(frozen=True)
class EngineConfig:
    """Every option of the engine, defined (with its default) here only; the server's settings and the CLI build one.

    max_batch: sequences decoded together (the runner's state slots); more wait.
    batch_invariant: the decoding step always runs every slot, so a row's result never depends on the others.
    prefill_chunk: prompt tokens per prompt and prefill call (prompts are read in chunks at multiples of it).
    prefill_rows: prompts per prefill call (None: up to 4, at most ``max_batch``).
    compile: torch.compile the decoding step (needs ``batch_invariant``); otherwise it is traced where it can be.
    decode: the decoding step's products: auto, dense or sparse (``spikegpt.runtime.products``).
    state_cache_bytes: > 0 turns on the prefix-state cache: states at every ``cache_stride`` tokens of a prompt (a
        multiple of the chunk; None: about 64), at its last chunk boundary and at a finished sequence's, in memory,
        and in ``state_cache_dir`` (within ``state_cache_dir_bytes``) when given.
    threads: torch's CPU thread count, set for the process (``spikegpt.threads``; None keeps a count already set
        there, else decides by its policy, which keeps clear of cores other work is using).
    """

    max_batch: int = 16
    batch_invariant: bool = True
    prefill_chunk: int = 8
    prefill_rows: int | None = None
    compile: bool = False
    decode: str = DEFAULT_DECODE
    state_cache_bytes: int = 0
    state_cache_dir: str | None = None
    state_cache_dir_bytes: int = 1 << 30
    cache_stride: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "prefill_chunk", "prefill_rows", "cache_stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.compile and not self.batch_invariant:
            raise ConfigError("compile needs batch_invariant (the compiled step has one fixed shape)")
        check_decode_mode(self.decode)
        if self.cache_stride is not None and self.cache_stride % self.prefill_chunk:
            chunk, stride = self.prefill_chunk, self.cache_stride
            raise ConfigError(f"the cache stride must be a multiple of the prefill chunk {chunk}, got {stride}")

    @property
    def rows(self) -> int:
        """Prompts per prefill call."""
        return self.prefill_rows or min(4, self.max_batch)

    @property
    def stride(self) -> int:
        """Tokens between the states a prompt stores in the cache."""
        return self.cache_stride or self.prefill_chunk * max(1, 64 // self.prefill_chunk)


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
    stats: on the final event, the spikes of every token the model processed for this request (prompt tokens
        restored from the cache were not processed and are not in it).
    error: with finish_reason "error", the stage that failed ("admit", "prefill", "decode", "sample",
        "detokenize"); the details are in the log.
    prompt_logprobs: on the first event, when asked for: None for the first prompt token, then one choice each.
    cached_tokens: prompt tokens restored from the prefix-state cache instead of computed.
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
    cached_tokens: int = 0
    spikes: TokenSpikes | None = None


class _Sequence:
    """A request in a slot. phase: "prefill" (its prompt is read by chunks), "feed" (its prompt's last tokens go
    through the decoding step; ``fed`` of them so far), "decode" (generating)."""

    def __init__(self, request: GenerationRequest, slot: int, text: TextStream):
        self.request = request
        self.slot = slot
        self.text = text
        self.completion_tokens = 0
        self.prompt_logprobs: list[TokenChoice | None] | None = None
        self.phase = "prefill"
        self.fed = 0
        self.task: PrefillTask | None = None
        self.cached_tokens = 0
        self.generated: list[int] = []
        self.boundary: tuple[int, RecurrentState] | None = None  # the last chunk boundary read, and its state
        self.reported: tuple[int, list[int]] | None = None  # with token_spikes: (tokens, counts) reported so far


class Engine:
    """Batched, streaming generation with one model: ``submit`` requests (from any thread), call ``step`` until
    ``has_work`` is False (from one thread), and read the events each step returns. How a step runs: the module's
    docstring."""

    def __init__(
        self,
        model: SpikeGPTForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        config: EngineConfig | None = None,
        *,
        crossovers: Crossovers | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``config``: the options (``EngineConfig()``'s defaults if None). ``crossovers``: the measured crossovers of
        the event-driven products (read from the crossover file if None). ``clock``: seconds, monotonic."""
        config = config if config is not None else EngineConfig()
        self.config = config
        apply_threads(config.threads)
        self.model = model.eval()
        self.device = model.head.weight.device
        self.runner = ModelRunner(
            model,
            config.max_batch,
            batch_invariant=config.batch_invariant,
            compile=config.compile,
            decode=config.decode,
            crossovers=crossovers,
        )
        self.tokenizer = tokenizer
        self.vocab_size = model.config.vocab_size
        self.eos_token_id = tokenizer.eos_token_id
        self.slots: list[_Sequence | None] = [None] * config.max_batch
        self.sampler = BatchSampler(config.max_batch, self.vocab_size, self.device)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[GenerationRequest] = []
        self._keys: dict[str, list[str]] = {}  # cache keys of waiting prompts' prefixes
        self.cache = self._state_cache()
        self.prefiller = Prefiller(model, config.rows, config.prefill_chunk, self.cache, config.stride)
        self._owners: dict[PrefillTask, _Sequence] = {}
        self.clock = clock
        self._active_at = clock()  # when the engine last had work besides background tasks

    def _state_cache(self) -> StateCache | None:
        config = self.config
        if config.state_cache_bytes <= 0:
            return None
        # what decides the arithmetic of a stored state, besides the weights: the prefill shape, dtype, device,
        # kernels and torch's own version
        layout = (
            f"chunk={config.prefill_chunk};rows={config.rows};dtype={self.model.dtype};"
            f"device={self.device.type};kernels={kernel_backend(self.runner.next_tokens)};torch={torch.__version__}"
        )
        directory = config.state_cache_dir
        fingerprint = model_fingerprint(self.model) if directory is not None else "this process"
        return StateCache(
            config.prefill_chunk,
            f"{fingerprint};{layout}",
            config.state_cache_bytes,
            directory,
            config.state_cache_dir_bytes,
            self.device,
            template=self.model.fresh_state(1),
        )

    def warm_up(self) -> None:
        """One prefill call and a tiny request, so that the first client does not pay for the first call of every
        operation. Nothing is cached."""
        c = self.config.prefill_chunk
        with torch.inference_mode():
            self.prefiller.run_chunk([PrefillTask([0] * c, 0, c, self.model.fresh_state(1))])
        request = GenerationRequest("warm-up", [0], SamplingParams(max_tokens=2, temperature=1.0, seed=0))
        for _ in generate(self, [request]):
            pass

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
        """Whether ``step`` has something to do now (background tasks count once the engine has been idle for
        ``BACKGROUND_AFTER_IDLE_S``; ``has_background`` says whether there are any)."""
        if self.running > 0 or self._waiting or not self._inbox.empty() or self.prefiller.urgent:
            return True
        return self.prefiller.busy and self.clock() - self._active_at >= BACKGROUND_AFTER_IDLE_S

    @property
    def has_background(self) -> bool:
        return self.prefiller.busy

    @torch.inference_mode()
    def step(self) -> list[GenerationEvent]:
        """One decoding step of every running sequence, then the admission of waiting requests and a prefill call;
        returns the events of this step: one for each sequence that sampled a token or finished, and the final
        event of each request that was aborted or refused."""
        events: list[GenerationEvent] = []
        self._drain_inbox(events)
        working = bool(self.running or self._waiting or self.prefiller.urgent)
        now = self.clock()
        if working:
            self._active_at = now
        idle = not working and now - self._active_at >= BACKGROUND_AFTER_IDLE_S
        stepping = [s for s in self.slots if s is not None and s.phase != "prefill"]
        if stepping and self._decode(stepping, events):
            ready = [s for s in stepping if self._fed(s)]
        else:
            ready = []
        self._admit_waiting(events)
        ready += self._read_prompts(events, busy=bool(stepping), idle=idle)
        for seq in [s for s in ready if s.request.params.max_tokens == 0]:  # score-only: done once the prompt is read
            event = self._finish(seq, "length", None)
            event.prompt_logprobs = seq.prompt_logprobs
            events.append(event)
        ready = [s for s in ready if s.request.params.max_tokens != 0]
        if ready:
            self._sample(ready, events)
        for seq in self.slots:  # the next prompt token of sequences still feeding theirs
            if seq is not None and seq.phase == "feed":
                self.runner.next_tokens[seq.slot, 0] = seq.request.prompt_ids[seq.fed]
        return events

    def fail_all(self) -> list[GenerationEvent]:
        """End every queued and running request with an error (after an unexpected failure of ``step``)."""
        events: list[GenerationEvent] = []
        self._drain_inbox(events)
        for request in self._waiting:
            events.append(self._rejected(request, "error", "step"))
        self._waiting.clear()
        self._keys.clear()
        for seq in self.slots:
            if seq is not None:
                events.append(self._finish(seq, "error", None, error="step"))
        for task in list(self.prefiller.tasks):  # background ones
            self.prefiller.remove(task)
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
                    self._keys.pop(item, None)
                    events.append(self._rejected(request, "abort"))
                    break
            for seq in self.slots:
                if seq is not None and seq.request.request_id == item:
                    events.append(self._finish(seq, "abort", None))

    def _valid(self, prompt: list[int]) -> bool:
        return bool(prompt) and all(0 <= t < self.vocab_size for t in prompt)

    def _prefix_keys(self, request: GenerationRequest) -> list[str]:
        keys = self._keys.get(request.request_id)
        if keys is None:
            keys = self._keys[request.request_id] = self.cache.keys(request.prompt_ids)
        return keys

    def _admit_waiting(self, events: list[GenerationEvent]) -> None:
        """Give free slots to waiting requests in arrival order. A request whose prompt shares a prefix that a
        prompt being read is about to store waits for it (computing it twice would cost rows, not time)."""
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            if None not in self.slots:
                self._waiting.append(request)
                continue
            if self.cache is not None and request.prompt_logprobs is None and self._valid(request.prompt_ids):
                keys, limit = self._prefix_keys(request), len(request.prompt_ids) - 1
                upcoming = self.prefiller.upcoming(keys, limit)
                if upcoming > self.cache.longest(request.prompt_ids, limit, keys):
                    self.prefiller.promote(keys, upcoming)
                    self._waiting.append(request)
                    continue
            self._admit(request, events)

    def _admit(self, request: GenerationRequest, events: list[GenerationEvent]) -> None:
        """Claim a slot; start from the longest cached prefix (not for prompt log-probabilities, which need every
        position's logits); read the rest by chunks, or feed it if less than a chunk is left. On any failure the
        request alone ends with an "admit" error and the slot stays free."""
        slot = self.slots.index(None)
        prompt = request.prompt_ids
        keys = self._keys.pop(request.request_id, None)
        try:
            if not self._valid(prompt):
                raise ValueError(f"prompt token ids must be a non-empty list in [0, {self.vocab_size})")
            start, state = 0, None
            if self.cache is not None and request.prompt_logprobs is None:
                start, state = self.cache.lookup(prompt, len(prompt) - 1, keys)
            seq = _Sequence(request, slot, TextStream(self.tokenizer, request.params.stop))
            seq.cached_tokens = start
            if request.prompt_logprobs is not None:
                seq.prompt_logprobs = [None]
            self.sampler.start(slot, request.params, prompt)
            state = state if state is not None else self.model.fresh_state(1)
            end = aligned(len(prompt), self.config.prefill_chunk)
            if start < end:
                scores = (lambda position, logits: self._score(seq, position, logits)) if seq.prompt_logprobs else None
                task = PrefillTask(prompt, start, end, state, scores=scores)
            else:
                task = None
                self._prompt_read(seq, start, state, None)
        except Exception:  # one bad request must not stop the others
            logger.exception("admit failed for request %s", request.request_id)
            self.sampler.release(slot)
            events.append(self._rejected(request, "error", "admit"))
            return
        self.slots[slot] = seq
        if task is not None:
            seq.task = task
            self._owners[task] = seq
            self.prefiller.add(task)

    def _read_prompts(self, events: list[GenerationEvent], busy: bool, idle: bool) -> list[_Sequence]:
        """Prefill calls: one while other sequences are decoding (their next token waits for it), else several,
        until a prompt is read. Background tasks ride in rows no request needs; a call of background tasks alone
        runs only when the engine is ``idle`` (nothing else for a while), one per step, so a request arriving
        meanwhile waits for one call at most. Returns the sequences whose whole prompt is read (ready to sample)."""
        ready: list[_Sequence] = []
        for _ in range(1 if busy else IDLE_PREFILL_CALLS):
            if not self.prefiller.urgent:
                if idle and self.prefiller.busy:
                    self.prefiller.step(background=True)
                break
            progressed = False
            for task in self.prefiller.step():
                seq = self._owners.pop(task, None)
                if seq is None:
                    continue  # a background task: its states are stored
                if task.error is not None:  # logged by the prefiller
                    seq.task = None
                    events.append(self._finish(seq, "error", None, error="prefill"))
                    continue
                self._prompt_read(seq, task.end, task.state, task.logits, task)
                progressed = True
                if seq.phase == "decode":
                    ready.append(seq)
            if progressed:
                break
        return ready

    def _prompt_read(self, seq: _Sequence, end: int, state, logits, task: PrefillTask | None = None) -> None:
        """The prompt's chunks are read by ``task`` (or restored, without one): into the slot, with the spike
        statistics of what was computed for it; then feed the rest or sample."""
        seq.task = None
        whole = end == len(seq.request.prompt_ids)
        self.runner.start(seq.slot, state, None if task is None else task.stats, logits if whole else None)
        if self.cache is not None:
            seq.boundary = (end, state)
        if whole:
            seq.phase = "decode"
        else:
            seq.phase, seq.fed = "feed", end

    def _fed(self, seq: _Sequence) -> bool:
        """After a decoding step: a feeding sequence has read one more prompt token; True if it is now ready to
        sample (or was already decoding)."""
        if seq.phase == "decode":
            return True
        if seq.prompt_logprobs is not None:
            self._score(seq, seq.fed, self.runner.logits[seq.slot : seq.slot + 1])
        seq.fed += 1
        if seq.fed == len(seq.request.prompt_ids):
            seq.phase = "decode"
            return True
        return False

    def _score(self, seq: _Sequence, position: int, logits: torch.Tensor) -> None:
        """Prompt log-probabilities from the logits at ``position`` onwards (position t predicts token t + 1)."""
        prompt = seq.request.prompt_ids
        targets = torch.tensor(prompt[position + 1 : position + 1 + logits.shape[0]], device=logits.device)
        if not len(targets):
            return
        scored = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
        values, tops = top_logprobs(scored, targets, seq.request.prompt_logprobs)
        choices = zip(targets.tolist(), values, tops, strict=True)
        seq.prompt_logprobs += [TokenChoice(t, v, top) for t, v, top in choices]

    def _decode(self, running: list[_Sequence], events: list[GenerationEvent]) -> bool:
        """One recurrent step for the running sequences; on failure they all end with an error (returns False)."""
        try:
            self.runner.decode([s.slot for s in running])
        except Exception:  # the batched step itself: every sequence in it ends
            logger.exception("decoding step failed; ending the %d sequences in it", len(running))
            for seq in running:
                events.append(self._finish(seq, "error", None, error="decode"))
            return False
        return True

    def _sample(self, ready: list[_Sequence], events: list[GenerationEvent]) -> None:
        """One batched sampling pass; if it fails, each sequence is sampled alone with the same random numbers (a
        row's result never depends on the others), so only a sequence that fails by itself ends."""
        slots = [s.slot for s in ready]
        uniforms = self.sampler.draw(slots)
        spikes = self._token_spikes(ready)
        logits, next_tokens = self.runner.logits, self.runner.next_tokens
        try:
            tokens, choices = self.sampler.sample(logits, slots, uniforms)
        except Exception:
            logger.exception("batched sampling failed; sampling its %d sequences one by one", len(ready))
        else:
            next_tokens[:, 0] = tokens
            for seq, choice in zip(ready, choices, strict=True):
                seq.generated.append(choice.token_id)
                self._advance(seq, choice, events, spikes.get(seq.slot))
            return
        for seq, uniform in zip(ready, uniforms, strict=True):
            try:
                tokens, (choice,) = self.sampler.sample(logits, [seq.slot], [uniform])
            except Exception:
                logger.exception("sampling failed for request %s", seq.request.request_id)
                events.append(self._finish(seq, "error", None, error="sample"))
                continue
            next_tokens[seq.slot, 0] = tokens[seq.slot]
            seq.generated.append(choice.token_id)
            self._advance(seq, choice, events, spikes.get(seq.slot))

    def _token_spikes(self, ready: list[_Sequence]) -> dict[int, TokenSpikes]:
        """The spikes since the last report of each sequence that asks for them, by slot: the difference of its
        running totals, so that what is reported always adds up to the final statistics."""
        asking = [seq for seq in ready if seq.request.token_spikes]
        if not asking:
            return {}
        out = {}
        for seq, (tokens, counts) in zip(asking, self.runner.stats.spikes([s.slot for s in asking]), strict=True):
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
        event.cached_tokens = seq.cached_tokens
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
        if seq.task is not None:  # aborted or failed while its prompt was read
            self.prefiller.remove(seq.task)
            self._owners.pop(seq.task, None)
        elif reason in ("stop", "length"):
            self._cache_the_end(seq)
        return GenerationEvent(
            seq.request.request_id,
            text,
            choice,
            len(seq.request.prompt_ids),
            seq.completion_tokens,
            reason,
            self.runner.stats.of(seq.slot),
            error,
            cached_tokens=seq.cached_tokens,
        )

    def _cache_the_end(self, seq: _Sequence) -> None:
        """Read the finished sequence (prompt and reply) by chunks in the background, from its prompt's last chunk
        boundary to the sequence's, so the next turn of a conversation starts from there. Its decoding steps
        computed those tokens by other arithmetic, which a cold next turn would not reproduce bit for bit."""
        if self.cache is None or seq.boundary is None:
            return
        tokens = seq.request.prompt_ids + seq.generated
        start, state = seq.boundary
        end = aligned(len(tokens), self.config.prefill_chunk)
        if end > start:
            self.prefiller.add(PrefillTask(tokens, start, end, state, background=True))


def generate(
    engine: Engine, requests: Iterable[GenerationRequest], max_in_flight: int | None = None
) -> Iterator[list[GenerationEvent]]:
    """Drive ``engine`` until it has nothing left to do: submit ``requests`` (all at once, or keeping at most
    ``max_in_flight`` of them unfinished), step, and yield each step's events. The one loop the CLI, the benchmarks
    and the tests run an engine with (the server's worker steps it from its own thread)."""
    pending = deque(requests)
    in_flight = 0
    while True:
        while pending and (max_in_flight is None or in_flight < max_in_flight):
            engine.submit(pending.popleft())
            in_flight += 1
        if not engine.has_work():
            return
        events = engine.step()
        in_flight -= sum(event.finish_reason is not None for event in events)
        yield events
