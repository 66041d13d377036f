"""``SpikeStats``: how many spikes each spiking site of a model emitted and what each projection read, per
sequence, kept on the device as whole numbers (int64)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SpikeStats:
    """Spike counts of a forward pass (or of several, accumulated) per sequence and site.

    counts: ``[batch, n_sites]`` int64 tensor on the model's device: spikes (nonzero outputs) per row and site.
    tokens: ``[batch]`` int64 tensor: tokens each row has processed, so every site saw ``tokens * n_embd`` values.
    sites: site names (``SpikeLayout.sites``).
    n_embd: elements per token at every site.
    reads: ``[batch, n_projections, 2]`` int64: what each projection's input held, per row: its nonzero elements
        and, where the input is whole numbers (spikes or spike counts), the sum of their magnitudes (else 0).
        None for statistics made without them.
    projections: projection names (``SpikeLayout.product_names``), in the order of ``reads``.
    head_tokens: ``[batch]`` int64: positions whose logits the head computed (set by ``SpikeGPTForCausalLM``;
        None where no head ran or it was not tracked).

    Nothing here forces a host synchronisation; ``firing_rate`` and ``site_rates`` return tensors.
    """

    counts: torch.Tensor
    tokens: torch.Tensor
    sites: tuple[str, ...]
    n_embd: int
    reads: torch.Tensor | None = None
    projections: tuple[str, ...] = ()
    head_tokens: torch.Tensor | None = None

    @property
    def elements(self) -> torch.Tensor:
        """``[batch]``: values each site produced per row."""
        return self.tokens * self.n_embd

    def site_rates(self) -> torch.Tensor:
        """``[n_sites]``: fraction of values that were spikes at each site, over all rows."""
        return self.counts.sum(dim=0) / self.elements.sum().clamp(min=1)

    def firing_rate(self) -> torch.Tensor:
        """Scalar: fraction of all values at all sites that were spikes."""
        return self.counts.sum() / (self.elements.sum() * len(self.sites)).clamp(min=1)

    def __add__(self, other: SpikeStats) -> SpikeStats:
        """Accumulate two passes over the same rows (e.g. prefill then decoding steps)."""
        if other.sites != self.sites or other.counts.shape != self.counts.shape:
            raise ValueError("can only add spike statistics of the same model and batch")
        return SpikeStats(
            self.counts + other.counts,
            self.tokens + other.tokens,
            self.sites,
            self.n_embd,
            _sum(self.reads, other.reads),
            self.projections,
            _sum(self.head_tokens, other.head_tokens),
        )

    def select(self, indices: torch.Tensor | list[int] | slice) -> SpikeStats:
        """The statistics of the given rows."""
        return SpikeStats(
            self.counts[indices],
            self.tokens[indices],
            self.sites,
            self.n_embd,
            None if self.reads is None else self.reads[indices],
            self.projections,
            None if self.head_tokens is None else self.head_tokens[indices],
        )

    @classmethod
    def stack(cls, stats: list[SpikeStats]) -> SpikeStats:
        first = stats[0]
        return cls(
            torch.cat([s.counts for s in stats]),
            torch.cat([s.tokens for s in stats]),
            first.sites,
            first.n_embd,
            _cat([s.reads for s in stats]),
            first.projections,
            _cat([s.head_tokens for s in stats]),
        )


# Optional fields: a result exists only where every operand has the field (statistics made without it have None).
def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a + b


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors)
