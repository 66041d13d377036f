"""Memristive-crossbar weight noise: how a model's weights come out when programmed into RRAM tiles.

The device model (each product's weight matrix, the same products ``spikegpt.quant.grids`` quantizes):

- **Tiles.** The matrix ``[out, in]`` is cut into ``tile_size`` × ``tile_size`` crossbar tiles (the last ones
  smaller). A tile's conductance range is set by its largest weight: |w| = w_max ↦ G_max, 0 ↦ G_min = 0.
- **Differential pairs.** A weight is the difference of two devices, G+ − G−; the device of the weight's sign
  holds |w|, the other sits at G_min, which is taken as ideal (no variation, no faults).
- **Limited conductance levels** (``levels`` L, optional): a device is programmed to one of L evenly spaced
  conductances in [0, G_max], so |w| snaps to the nearest multiple of w_max / (L − 1). Applied before the noise.
- **Conductance variation** (``sigma``), one independent draw per device:
  ``lognormal`` (multiplicative, the programming variation of filamentary RRAM): G' = G · exp(N(0, σ²)), so
  ln(G'/G) has standard deviation σ and a weight of 0 stays 0;
  ``gaussian`` (additive programming noise, relative to the tile's range): the pair's difference G+ − G− moves by
  N(0, (σ · G_max)²), so a weight may change sign and a weight of 0 does not stay 0.
- **Stuck-at faults** (``stuck_rate`` p): each weight's device is stuck with probability p, at G_min (the weight
  becomes 0) or, for a fraction ``stuck_on_fraction`` of the faults, at G_max (the weight becomes ±w_max with its
  own sign). Faults are drawn after the variation and override it.

What it leaves out: wire (IR) drop and sneak paths along the tile's lines, read noise that changes from one
read to the next (each draw is one programmed chip, read noiselessly), conductance drift over time, the DAC and
ADC at the tile's edges, and faults or variation in the G− device. Each draw is seeded (``seed + draw``), so a
figure is reproducible; several draws give bits per byte as mean ± standard deviation over chips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .grids import quantized_linears

NOISE_KINDS = ("lognormal", "gaussian")


@dataclass(frozen=True)
class DeviceModel:
    """The crossbar a model's weights are programmed into (see the module docstring)."""

    sigma: float
    kind: str = "lognormal"
    stuck_rate: float = 0.0
    stuck_on_fraction: float = 0.5
    levels: int | None = None
    tile_size: int = 256

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ConfigError(f"the weight noise sigma must be a finite number >= 0, got {self.sigma}")
        if self.kind not in NOISE_KINDS:
            raise ConfigError(f"the noise model must be one of {', '.join(NOISE_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.stuck_rate <= 1.0:
            raise ConfigError(f"the stuck-at fault rate must be in [0, 1], got {self.stuck_rate}")
        if not 0.0 <= self.stuck_on_fraction <= 1.0:
            raise ConfigError(f"the stuck-on fraction must be in [0, 1], got {self.stuck_on_fraction}")
        if self.levels is not None and self.levels < 2:
            raise ConfigError(f"a device needs at least 2 conductance levels, got {self.levels}")
        if self.tile_size < 1:
            raise ConfigError(f"the tile size must be at least 1, got {self.tile_size}")

    def describe(self) -> dict:
        return {
            "sigma": self.sigma,
            "kind": self.kind,
            "stuck_rate": self.stuck_rate,
            "stuck_on_fraction": self.stuck_on_fraction,
            "levels": self.levels,
            "tile_size": self.tile_size,
        }


def tile_max(weight: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Each weight's tile range: max |w| over its ``tile_size`` × ``tile_size`` tile, broadcast to ``[out, in]``."""
    out_f, in_f = weight.shape
    rows, cols = math.ceil(out_f / tile_size), math.ceil(in_f / tile_size)
    padded = weight.abs().new_zeros(rows * tile_size, cols * tile_size)
    padded[:out_f, :in_f] = weight.abs()
    per_tile = padded.view(rows, tile_size, cols, tile_size).amax(dim=(1, 3))
    return per_tile.repeat_interleave(tile_size, 0).repeat_interleave(tile_size, 1)[:out_f, :in_f]


def program_weight(weight: torch.Tensor, device: DeviceModel, generator: torch.Generator) -> torch.Tensor:
    """One programmed copy of ``weight`` ``[out, in]`` (float32), drawn with ``generator``."""
    w = weight.detach().float()
    w_max = tile_max(w, device.tile_size)
    sign, magnitude = torch.sign(w), w.abs()
    if device.levels is not None:
        step = w_max / (device.levels - 1)
        magnitude = torch.where(step > 0, torch.round(magnitude / step.clamp_min(1e-30)) * step, magnitude)
    if device.sigma > 0:
        noise = torch.randn(w.shape, generator=generator)
        if device.kind == "lognormal":
            magnitude = magnitude * torch.exp(device.sigma * noise)
        else:
            w_noisy = sign * magnitude + device.sigma * w_max * noise
            sign, magnitude = torch.sign(w_noisy), w_noisy.abs()
    if device.stuck_rate > 0:
        faults = torch.rand(w.shape, generator=generator) < device.stuck_rate
        stuck_on = torch.rand(w.shape, generator=generator) < device.stuck_on_fraction
        magnitude = torch.where(faults, torch.where(stuck_on, w_max, torch.zeros_like(w_max)), magnitude)
    return sign * magnitude


@torch.no_grad()
def program_model_(model: nn.Module, device: DeviceModel, seed: int, clean: dict[str, torch.Tensor]) -> None:
    """Replace every product's weights by one programmed copy of ``clean`` (its weights by module name), in place;
    the draw is a function of ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    for name, linear in quantized_linears(model):
        linear.weight.copy_(program_weight(clean[name], device, generator))


@contextmanager
def programmed_chips(model: nn.Module, device: DeviceModel, draws: int, seed: int = 0) -> Iterator[Iterator[int]]:
    """``with programmed_chips(model, device, 5) as chips: for draw in chips: evaluate(model)``: the model holds
    draw ``seed + i``'s weights inside iteration i; the clean weights are back afterwards, whatever happened."""
    if draws < 1:
        raise ConfigError(f"need at least one noise draw, got {draws}")
    clean = {name: linear.weight.detach().clone() for name, linear in quantized_linears(model)}

    def chips() -> Iterator[int]:
        for draw in range(draws):
            program_model_(model, device, seed + draw, clean)
            yield seed + draw

    try:
        yield chips()
    finally:
        with torch.no_grad():
            for name, linear in quantized_linears(model):
                linear.weight.copy_(clean[name])
