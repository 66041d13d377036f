"""Spiking neurons as stateless modules: the embedding's spike function, the multi-step LIF layer on the residual
stream, and the encoders of the projections' inputs (placement "inputs").

Both take their membrane (if any) as an argument and return the new one, so no request's state can leak into
another's. With ``config.spiking = False`` both are the identity, for a non-spiking reference model.

Each also takes a padding ``mask`` ``[B, T]`` (bool, True = a real token; None = all real): a padded position
changes no membrane and is counted nowhere (no spikes, no reads).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import SpikeGPTConfig
from .ops import LIFParams, lif, spike, spike_count

__all__ = ["EmbeddingSpikes", "InputSpikes", "LIFLayer", "input_reads", "lsq_primitive", "spike"]


def lif_params(config: SpikeGPTConfig) -> LIFParams:
    """The LIF settings of ``config``, read at every call so that a training schedule may anneal the threshold."""
    return LIFParams(config.lif_tau, config.lif_threshold, config.lif_reset, config.surrogate, config.surrogate_alpha)


def _detached(x: torch.Tensor) -> torch.Tensor:
    """x without its gradient; x itself where it has none (a traced decoding step then records no operation)."""
    return x.detach() if x.requires_grad else x


def _real(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x ``[B, T, C]`` detached, with its padded positions zeroed (so that counting them counts nothing)."""
    x = _detached(x)
    return x if mask is None else torch.where(mask[:, :, None], x, 0)


def _nonzero_per_row(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` int64: nonzero elements of each row of x ``[B, T, C]`` at its real positions."""
    return torch.count_nonzero(_real(x, mask), dim=(1, 2))


def input_reads(x: torch.Tensor, integer: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """What a matrix product read from x ``[B, T, C]`` at the real positions: ``[B, 2]`` int64, the nonzero
    elements of each row and, when x holds whole numbers (spikes, spike counts), the sum of their magnitudes (0 for
    real-valued x)."""
    x = _real(x, mask)
    nonzero = _nonzero_per_row(x)
    if not integer:
        return torch.stack([nonzero, torch.zeros_like(nonzero)], dim=1)
    return torch.stack([nonzero, x.abs().sum(dim=(1, 2), dtype=torch.int64)], dim=1)  # (whole numbers: exact)


class EmbeddingSpikes(nn.Module):
    """Heaviside spikes of the embedding (``x >= 0``) with a surrogate gradient; counts spikes per row."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.spiking and self.config.binary_embedding:
            x = spike(x, self.config.surrogate, self.config.surrogate_alpha)
        return x, _nonzero_per_row(x, mask)


class LIFLayer(nn.Module):
    """Multi-step LIF neurons along the token axis, parameters from the config (read at every call, so that a
    training schedule may anneal ``lif_threshold``)."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.config = config

    def forward(
        self, x: torch.Tensor, v0: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, T, C]``, membrane ``v0`` ``[B, C]`` or None → (spikes, last membrane, spikes per row ``[B]``)."""
        c = self.config
        if not c.spiking:
            v_last = v0 if v0 is not None else x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
            return x, v_last, _nonzero_per_row(x, mask)
        spikes, v_last, counts = lif(x, v0, lif_params(c), return_counts=True, mask=mask)
        return spikes, v_last, counts.sum(dim=1, dtype=torch.int64)  # per channel at most T: exact in fp32


class InputSpikes(nn.Module):
    """The spikes that one or more projections read (placement "inputs"), from their real-valued inputs.

    ``signed[i]`` says whether input i can be negative (token-shifted LayerNorm outputs, r ⊙ wkv) or not (relu(k)²).
    ``config.input_spikes`` "binary": multi-step LIF spikes of all the inputs side by side, one LIF call, membrane
    ``[B, sum(widths)]`` carried in the recurrent state; "counts": per input and token, integer counts
    round(x / θ) clipped to −K..K (0..K unsigned) with θ = mean|x| / spike_count_scale (detached, so θ only
    scales), no membrane. A product of counts is then multiplied by θ: ``W (θ s) = θ (W s)``.

    ``config.learned_thresholds``: ``log_threshold`` ``[n_parts]`` holds a learned a per input (per projection),
    θ_i = exp(a_i) θ. Counts: the gradient reaches a through θ's two uses, the product's scale and x / θ in the
    counts (straight through): d(θ s)/dθ = s − x/θ inside −K..K and s outside, LSQ's step-size gradient
    (``lsq_primitive``; LSQ's gradient scale is left out: Adam normalises each parameter's step anyway). Binary:
    input i is divided by exp(a_i) before the LIF, as a threshold exp(a_i) times lif_threshold.
    """

    def __init__(self, config: SpikeGPTConfig, widths: tuple[int, ...], signed: tuple[bool, ...]):
        super().__init__()
        self.config = config
        self.widths, self.signed = widths, signed
        self.membrane_width = sum(widths) if config.input_spikes == "binary" else 0
        learned = nn.Parameter(torch.zeros(len(widths))) if config.learned_thresholds else None
        self.register_parameter("log_threshold", learned)

    def forward(self, parts: list[torch.Tensor], v0: torch.Tensor | None, mask: torch.Tensor | None = None):
        """parts ``[B, T, width_i]`` → (spikes per part, scale per part (``[B, T, 1]`` or None), membrane
        ``[B, membrane_width]``, reads ``[B, n_parts, 2]`` int64 as ``input_reads``)."""
        c = self.config
        if c.input_spikes == "binary":
            if self.log_threshold is not None:
                parts = [x * torch.exp(-a).to(x.dtype) for x, a in zip(parts, self.log_threshold, strict=True)]
            x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
            out, v_last = lif(x, v0, lif_params(c), mask=mask)
            spikes = list(torch.split(out, self.widths, dim=-1))
            scales = [None] * len(parts)
        else:
            spikes, scales = [], []
            for i, (x, signed) in enumerate(zip(parts, self.signed, strict=True)):
                theta = self._count_threshold(x, i)
                low = -c.spike_count_max if signed else 0
                spikes.append(spike_count(x / theta, low, c.spike_count_max))
                scales.append(theta)
            v_last = parts[0].new_zeros(parts[0].shape[0], 0, dtype=torch.float32)
        reads = torch.stack([input_reads(s, integer=True, mask=mask) for s in spikes], dim=1)
        return spikes, scales, v_last, reads

    def _count_threshold(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """θ ``[B, T, 1]`` of input ``part``: mean|x| / k per token (detached), times the learned exp(a) if any."""
        theta = _detached(x).abs().mean(dim=-1, keepdim=True).div_(self.config.spike_count_scale)
        if self.log_threshold is None:
            return theta.clamp_(min=torch.finfo(theta.dtype).tiny)
        theta = theta * torch.exp(self.log_threshold[part]).to(theta.dtype)
        return theta.clamp(min=torch.finfo(theta.dtype).tiny)


def lsq_primitive(x: torch.Tensor, theta: torch.Tensor, at: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The function of θ whose derivative the learned threshold's backward uses at θ = ``at`` (used by tests):
    θ s + θ clamp(x/θ) − θ clamp(x/at), with the counts s = clamp(round(x/at)) held. At θ = at its value is the
    encoded input θ s, and its derivative in θ is LSQ's: s − x/θ inside low..high, s outside."""
    counts = torch.round(x / at).clamp(low, high)
    return theta * counts + theta * ((x / theta).clamp(low, high) - (x / at).clamp(low, high))
