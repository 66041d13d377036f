"""``SpikeStats``: how many spikes each spiking site of a model emitted, per sequence, kept on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def site_names(n_layer: int, ffn_pre: bool) -> tuple[str, ...]:
    """Names of the spiking sites in forward order: the embedding, then each block's two LIF layers."""
    names = ["embedding"]
    for i in range(n_layer):
        names.append(f"blocks.{i}.{'ffn_pre' if ffn_pre and i == 0 else 'att'}.lif")
        names.append(f"blocks.{i}.ffn.lif")
    return tuple(names)


@dataclass
class SpikeStats:
    """Spike counts of a forward pass (or of several, accumulated) per sequence and site.

    counts: ``[batch, n_sites]`` fp32 tensor on the model's device: spikes (nonzero outputs) per row and site.
    tokens: ``[batch]`` int64 tensor: tokens each row has processed, so every site saw ``tokens * n_embd`` values.
    sites: site names (see ``site_names``).
    n_embd: elements per token at every site.

    Nothing here forces a host synchronisation; ``firing_rate`` and ``site_rates`` return tensors.
    """

    counts: torch.Tensor
    tokens: torch.Tensor
    sites: tuple[str, ...]
    n_embd: int

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
        return SpikeStats(self.counts + other.counts, self.tokens + other.tokens, self.sites, self.n_embd)

    def select(self, indices: torch.Tensor | list[int] | slice) -> SpikeStats:
        """The statistics of the given rows."""
        return SpikeStats(self.counts[indices], self.tokens[indices], self.sites, self.n_embd)

    @classmethod
    def stack(cls, stats: list[SpikeStats]) -> SpikeStats:
        first = stats[0]
        return cls(
            torch.cat([s.counts for s in stats]), torch.cat([s.tokens for s in stats]), first.sites, first.n_embd
        )
