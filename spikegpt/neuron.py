"""Spiking neurons as stateless modules: the embedding's spike function and the multi-step LIF layer.

Both take their membrane (if any) as an argument and return the new one, so no request's state can leak into
another's. With ``config.spiking = False`` both are the identity, for a non-spiking reference model.
"""

from __future__ import annotations

import torch
from torch import nn

from spikegpt.kernels import lif
from spikegpt.kernels.surrogate import spike

from .config import SpikeGPTConfig

__all__ = ["EmbeddingSpikes", "LIFLayer", "spike"]


def _nonzero_per_row(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).sum(dim=(1, 2), dtype=torch.float32)


class EmbeddingSpikes(nn.Module):
    """Heaviside spikes of the embedding (``x >= 0``) with a surrogate gradient; counts spikes per row."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.spiking and self.config.binary_embedding:
            x = spike(x, self.config.surrogate, self.config.surrogate_alpha)
        return x, _nonzero_per_row(x.detach())


class LIFLayer(nn.Module):
    """Multi-step LIF neurons along the token axis, parameters from the config (read at every call, so that a
    training schedule may anneal ``lif_threshold``)."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, T, C]``, membrane ``v0`` ``[B, C]`` or None → (spikes, last membrane, spikes per row ``[B]``)."""
        c = self.config
        if not c.spiking:
            v_last = v0 if v0 is not None else x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
            return x, v_last, _nonzero_per_row(x.detach())
        spikes, v_last, counts = lif(
            x, v0, c.lif_tau, c.lif_threshold, c.lif_reset, c.surrogate, c.surrogate_alpha, return_counts=True
        )
        return spikes, v_last, counts.sum(dim=1)
