"""Chunked, batched prefill with one fixed shape, so that a prefix's state is the same bits however it was reached.

Every prompt is read in chunks of ``chunk`` tokens that start at absolute multiples of ``chunk``; each call runs
``rows`` such chunks (one per prompt, zero-padded rows when fewer prompts wait) as one ``[rows, chunk]`` forward.
With the shapes held fixed, a row's result is bitwise independent of the other rows (REFERENCES.md, "Batch
variance"), so the state after ``k * chunk`` tokens of a prompt does not depend on what else was prefilled, on
how many calls it took, or on whether the first chunks were computed now or restored from the prefix-state
cache. The rest of a prompt (fewer than ``chunk`` tokens) is fed through the engine's fixed-shape decoding step,
which is batch-invariant too.

``Prefiller`` keeps the prompts being read (``PrefillTask``) and runs one call at a time: requests first, in
arrival order, then background tasks (computing a cache entry at the end of a finished sequence) in the rows left
over. It stores states at cache points as tasks pass them and knows which prefixes are about to be stored, so a
request that shares one can wait for it instead of computing it again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..modeling.model import SpikeGPTForCausalLM
from ..modeling.state import RecurrentState
from ..modeling.stats import SpikeStats
from .state_cache import StateCache

logger = logging.getLogger(__name__)

MAX_BACKGROUND = 16  # background tasks kept waiting for spare rows


def aligned(n: int, chunk: int) -> int:
    """The last chunk boundary at or before ``n`` tokens."""
    return n - n % chunk


@dataclass(eq=False)
class PrefillTask:
    """Tokens ``[position, end)`` of ``tokens`` still to read by chunks (both multiples of the chunk), from
    ``state`` (batch 1), the state after ``tokens[:position]``.

    scores: called with (first position, logits of every position of a chunk ``[chunk, vocab]``) for prompt
        log-probabilities. background: runs only in rows no request needs.
    After the last chunk: ``logits`` (the last position's, ``[vocab]``) and ``stats``, the spike statistics of what
    was read (one row: spikes per site, what each projection read, the tokens read and the positions whose logits
    were computed: every position when scoring, else the last one).
    """

    tokens: list[int]
    position: int
    end: int
    state: RecurrentState
    keys: list[str] = field(default_factory=list)
    scores: Callable[[int, torch.Tensor], None] | None = None
    background: bool = False
    awaited: bool = False  # a background task that a waiting request needs
    stats: SpikeStats | None = None
    logits: torch.Tensor | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.position >= self.end


class ChunkRunner:
    """One ``[rows, chunk]`` forward over the next chunk of up to ``rows`` tasks."""

    def __init__(self, model: SpikeGPTForCausalLM, rows: int, chunk: int):
        if rows < 1 or chunk < 1:
            raise ValueError(f"prefill rows and chunk must be at least 1, got {rows} and {chunk}")
        self.model = model
        self.rows = rows
        self.chunk = chunk
        self.device = model.head.weight.device
        self._padding = model.fresh_state(1)

    def __call__(self, tasks: list[PrefillTask]) -> None:
        """Advance each task by one chunk (its state, counts, and last logits). Raises if the forward fails (no
        task changed); a task whose own part fails afterwards (its scores) gets ``error`` instead."""
        if not 0 < len(tasks) <= self.rows:
            raise ValueError(f"a prefill call takes 1 to {self.rows} tasks, got {len(tasks)}")
        c = self.chunk
        ids = torch.zeros(self.rows, c, dtype=torch.long, device=self.device)
        for i, task in enumerate(tasks):
            ids[i] = torch.tensor(task.tokens[task.position : task.position + c], device=self.device)
        state = RecurrentState.stack([t.state for t in tasks] + [self._padding] * (self.rows - len(tasks)))
        out = self.model.model(ids, state=state, output_spike_stats=True)
        hidden = out.last_hidden_state
        for i, task in enumerate(tasks):
            try:
                if task.scores is not None:
                    task.scores(task.position, self.model.head(hidden[i]))
                # the head of one row at a time: a product's result can depend on its row's place among a few
                # rows (edge tiles of the matrix kernel), never on its own [1, n_embd] shape
                logits = self.model.head(hidden[i, -1:])[0] if task.position + c >= task.end else None
            except Exception as e:
                task.error = f"{type(e).__name__}: {e}"
                continue
            task.state = out.state.select([i])
            stats = out.spike_stats.select([i])
            stats.head_tokens = torch.full_like(stats.tokens, c if task.scores is not None else int(logits is not None))
            task.stats = stats if task.stats is None else task.stats + stats
            task.position += c
            task.logits = logits


class Prefiller:
    """The prompts being prefilled, one fixed-shape call at a time, storing states in ``cache`` at every multiple
    of ``stride`` tokens and at each task's end."""

    def __init__(
        self, model: SpikeGPTForCausalLM, rows: int, chunk: int, cache: StateCache | None = None, stride: int = 64
    ):
        if stride < chunk or stride % chunk:
            raise ValueError(f"the cache stride must be a multiple of the prefill chunk {chunk}, got {stride}")
        self.run_chunk = ChunkRunner(model, rows, chunk)
        self.rows = rows
        self.chunk = chunk
        self.cache = cache
        self.stride = stride
        self.tasks: list[PrefillTask] = []
        self._upcoming: Counter[str] = Counter()  # keys of cache points the tasks have yet to reach

    def _store_points(self, task: PrefillTask) -> list[int]:
        """Token counts after which ``task``'s state is stored, ahead of it."""
        if self.cache is None:
            return []
        # a finished sequence's reply (background) at every boundary: the next turn re-tokenises the reply's text,
        # which may part from the generated tokens near its end
        stride = self.chunk if task.background else self.stride
        points = [p for p in range(task.position + self.chunk, task.end + 1, self.chunk) if p % stride == 0]
        if task.end > task.position and (not points or points[-1] != task.end):
            points.append(task.end)
        return points

    def add(self, task: PrefillTask) -> None:
        """Queue a task. Background tasks beyond ``MAX_BACKGROUND`` push out the oldest: under sustained load spare
        rows are rare, and a sequence finished long ago is the least likely to be continued."""
        if self.cache is not None and not task.keys:
            task.keys = self.cache.keys(task.tokens[: task.end])
        if task.background:
            queued = [t for t in self.tasks if t.background and not t.awaited]
            for old in queued[: max(0, len(queued) + 1 - MAX_BACKGROUND)]:
                self.remove(old)
        self.tasks.append(task)
        for p in self._store_points(task):
            self._upcoming[task.keys[p // self.chunk - 1]] += 1

    def remove(self, task: PrefillTask) -> None:
        self.tasks.remove(task)
        for p in self._store_points(task):
            self._upcoming[task.keys[p // self.chunk - 1]] -= 1
        self._upcoming += Counter()  # drop zero counts

    def upcoming(self, keys: list[str], limit: int) -> int:
        """The longest prefix (in tokens, at most ``limit``) with these ``keys`` that a task is about to store."""
        for k in range(min(limit // self.chunk, len(keys)), 0, -1):
            if self._upcoming[keys[k - 1]] > 0:
                return k * self.chunk
        return 0

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    def promote(self, keys: list[str], length: int) -> None:
        """A request waits for the prefix of ``length`` tokens named by ``keys``: the background tasks about to
        store it run as requests do, not only in rows left over."""
        k = length // self.chunk
        for task in self.tasks:
            if task.background and len(task.keys) >= k and task.keys[k - 1] == keys[k - 1]:
                task.awaited = True

    @property
    def urgent(self) -> bool:
        """Whether a task that someone waits for is queued (a request's, or a background one a request awaits)."""
        return any(not t.background or t.awaited for t in self.tasks)

    def step(self, background: bool = True) -> list[PrefillTask]:
        """One call over the first tasks (requests first; background tasks only in the rows left over, or alone when
        ``background``); returns those that finished or failed (``error``), which have left. If the call fails, each
        of its tasks is tried alone (the same bits: the shape is the same), so only a task that fails by itself
        fails."""
        first = [t for t in self.tasks if not t.background or t.awaited]
        if not first and not background:
            return []
        chosen = (first + [t for t in self.tasks if t.background and not t.awaited])[: self.rows]
        if not chosen:
            return []
        try:
            self.run_chunk(chosen)
        except Exception as e:
            if len(chosen) == 1:
                logger.exception("a prefill call failed")
                chosen[0].error = f"{type(e).__name__}: {e}"
            else:
                for task in chosen:
                    try:
                        self.run_chunk([task])
                    except Exception as alone:
                        logger.exception("a prefill call failed")
                        task.error = f"{type(alone).__name__}: {alone}"
        for task in chosen:
            if task.error is None:
                self._reached(task)
        finished = [t for t in chosen if t.done or t.error is not None]
        for task in finished:
            self.remove(task)
        return finished

    def _reached(self, task: PrefillTask) -> None:
        """Store the task's state if it just passed a cache point."""
        if self.cache is None:
            return
        p = task.position
        if p % (self.chunk if task.background else self.stride) == 0 or p == task.end:
            key = task.keys[p // self.chunk - 1]
            self.cache.store(task.tokens[:p], key, task.state)
            self._upcoming[key] -= 1
            if self._upcoming[key] <= 0:
                del self._upcoming[key]
