"""``ModelRunner``: what executes the model for the engine, as vLLM's model runner beside its scheduler.

It owns the state slots (one row of recurrent state per sequence the engine may run at once, the logits each row's
next token is sampled from, and the token each row reads next), the decoding step over them (eager, traced with
``torch.jit.trace`` or compiled with ``torch.compile``), the products that step computes with
(``spikegpt.runtime.products``: dense, event-driven, int8 and their compositions) and each slot's spike statistics
(``SlotStats``: one ``SpikeStats`` over every slot). What runs when, and for whom, is the engine's.

With ``batch_invariant`` the step always runs every slot, so on a CPU a row's result depends on nothing but the
row; the fixed shape lets it be traced (the default on the torch kernels: the same operations without Python
between them) or compiled. Without it only the running rows are decoded, eagerly.
"""

from __future__ import annotations

import torch

from spikegpt.kernels import kernel_backend

from ..modeling.model import SpikeGPTForCausalLM
from ..modeling.state import RecurrentState
from ..modeling.stats import SpikeStats
from .products import Crossovers, step_products
from .step import trace_decode_step

StepOutput = tuple[torch.Tensor, RecurrentState, tuple[torch.Tensor, torch.Tensor]]


class SlotStats:
    """Each slot's spike statistics since its sequence's prompt: one ``SpikeStats`` over every slot (``totals``),
    kept as whole numbers (int64: exact however long a sequence runs), to which the prompt's and each decoding
    step's statistics add."""

    FIELDS = ("counts", "tokens", "reads", "head_tokens")

    def __init__(self, model: SpikeGPTForCausalLM, slots: int):
        sites, projections = model.model.sites, model.model.projections
        device = model.head.weight.device

        def whole(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.long, device=device)

        self.totals = SpikeStats(
            counts=whole(slots, len(sites)),
            tokens=whole(slots),
            sites=sites,
            n_embd=model.config.n_embd,
            reads=whole(slots, len(projections), 2),
            projections=projections,
            head_tokens=whole(slots),
        )

    def start(self, slot: int, stats: SpikeStats | None) -> None:
        """A new sequence in ``slot``: its statistics so far are ``stats`` (one row; None: nothing computed yet)."""
        for name in self.FIELDS:
            getattr(self.totals, name)[slot] = 0 if stats is None else getattr(stats, name)[0]

    def add(self, stats: SpikeStats, rows: torch.Tensor | None = None) -> None:
        """Add a pass's statistics of every slot (``rows`` None) or of ``rows``, in order."""
        index = slice(None) if rows is None else rows
        for name in self.FIELDS:
            getattr(self.totals, name)[index] += getattr(stats, name)

    def of(self, slot: int) -> SpikeStats:
        """A copy of ``slot``'s statistics."""
        return self.totals.select([slot])

    def spikes(self, slots: list[int]) -> list[tuple[int, list[int]]]:
        """(tokens, spikes per site) of each of ``slots``, read in one host transfer."""
        rows = torch.cat([self.totals.tokens[slots, None], self.totals.counts[slots]], dim=1).tolist()
        return [(tokens, counts) for tokens, *counts in rows]


class ModelRunner:
    """The state slots, the decoding step, its products and the slots' statistics of one model (see the module
    docstring). ``decode`` and ``crossovers``: the decoding step's products (``step_products``); a model on the
    8-bit grid decodes with int8 weights on a CPU (a quarter of the bytes per token), unless compiled."""

    def __init__(
        self,
        model: SpikeGPTForCausalLM,
        slots: int,
        *,
        batch_invariant: bool,
        compile: bool,
        decode: str,
        crossovers: Crossovers | None = None,
    ):
        self.model = model.eval()
        self.slots = slots
        self.batch_invariant = batch_invariant
        self.device = model.head.weight.device
        self.products = step_products(model, decode, slots, crossovers, compiled=compile)
        self.state = model.fresh_state(slots)
        self.logits = torch.zeros(slots, model.config.vocab_size, device=self.device)
        self.next_tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.stats = SlotStats(model, slots)
        self._one_each = torch.ones(slots, dtype=torch.long, device=self.device)
        self.decode_step = self._step_function(compile)

    def _step_function(self, compile: bool):
        """The fixed-shape step's hundreds of small operations cost more than its arithmetic on a CPU: compiled, they
        become a few fused kernels (compiled once, at the first step); traced, TorchScript runs the same operations
        without Python between them. Either way a row's result still depends on nothing but the row."""
        if compile:  # (EngineConfig checks that the step has one fixed shape: batch_invariant)
            compiled = torch.compile(self._forward, dynamic=False)

            def step(tokens: torch.Tensor, state: RecurrentState) -> StepOutput:
                with self.products:  # outside the compiled code: it sees the same product modules every call
                    return compiled(tokens, state)

            return step
        if self.batch_invariant and kernel_backend(self.next_tokens, steps=1) == "torch":
            return trace_decode_step(self.model, self.next_tokens, self.state, self.products)
        return self._eager_step

    def _forward(self, tokens: torch.Tensor, state: RecurrentState) -> StepOutput:
        """One recurrent step: (last logits [B, vocab], new state, (spike counts [B, sites], reads))."""
        out = self.model(tokens, state=state, output_spike_stats=True)
        return out.logits[:, -1], out.state, (out.spike_stats.counts, out.spike_stats.reads)

    def _eager_step(self, tokens: torch.Tensor, state: RecurrentState) -> StepOutput:
        with self.products:
            return self._forward(tokens, state)

    def start(self, slot: int, state: RecurrentState, stats: SpikeStats | None, logits: torch.Tensor | None) -> None:
        """A sequence takes ``slot``: its state after the part of its prompt that was read (computed, with
        ``stats``, or restored from the cache), and the logits of its last position when the whole prompt is read."""
        self.state.write_rows([slot], state)
        self.stats.start(slot, stats)
        if logits is not None:
            self.logits[slot] = logits

    def decode(self, slots: list[int]) -> None:
        """One recurrent step reading each slot's ``next_tokens``: every slot's (``batch_invariant``) or only
        ``slots``'; their state, logits and statistics advance. Raises if the step fails."""
        if self.batch_invariant:
            logits, self.state, (counts, reads) = self.decode_step(self.next_tokens, self.state)
            self.logits.copy_(logits)
            self.stats.add(self._step_stats(counts, reads, self._one_each))
            return
        rows = torch.tensor(slots, device=self.device)
        logits, state, (counts, reads) = self._eager_step(self.next_tokens[rows], self.state.select(rows))
        self.state.write_rows(rows, state)
        self.logits[rows] = logits.float()
        self.stats.add(self._step_stats(counts, reads, self._one_each[: len(slots)]), rows)

    def _step_stats(self, counts: torch.Tensor, reads: torch.Tensor, ones: torch.Tensor) -> SpikeStats:
        """A decoding step's statistics: one token read and one position's logits per row."""
        totals = self.stats.totals
        return SpikeStats(counts, ones, totals.sites, totals.n_embd, reads, totals.projections, ones)
