"""8-bit weights for decoding on a CPU: the int8 codes and scales a product reads, a quarter of the bytes an fp32
weight takes. ``spikegpt.runtime.products`` puts them to work (an int8 product module per projection, alone or
event-driven).

The products are ``spikegpt.kernels.int8_linear`` and ``int8_sparse_linear`` (the definition: ``kernels/int8_torch.py``;
compiled CPU kernels built on first use, the reference where they cannot be built): each row of a product's input
becomes whole numbers, multiplied by the int8 codes with exact int32 sums and scaled per output channel. A product
that reads spikes (the ``inputs`` placement: spike counts, ``layout.Product.reads_spikes``) multiplies the counts as
they are, so its result is the fp32 product of the grid weights up to the last rounding of each output; a product
that reads real values (a LayerNorm output, relu(k)², the head's input) quantizes each row to int8 with its own
scale (max|x| / 127), about 0.7% of the largest output (tests/quant/test_int8.py), which can flip a spike near
threshold (its cost in bits per byte: bench/hardware_study.py). One scale per row: a row's result never depends on
the other rows (the engine's batch invariance), and the event-driven product (only the int8 rows of nonzero
inputs) gives the dense product's bits.

The model's float weights stay in place (the energy report, saving and the parallel form read them).
"""

from __future__ import annotations

import torch
from torch import nn

from spikegpt.kernels import int8_linear, int8_sparse_linear

from ..errors import ConfigError
from .grids import model_weight_bits, quantize_weight


def check_int8_model(model: nn.Module) -> None:
    """Int8 products need a model whose product weights are on the 8-bit grid."""
    if model_weight_bits(model) != 8:
        raise ConfigError("int8 kernels need a model whose weights are on the 8-bit grid (weight_bits 8)")


class Int8Weights(nn.Module):
    """One product's 8-bit weights, recovered exactly from its grid weights (``quantize_weight`` of a grid is the
    grid): ``codes`` ``[out, in]`` (output-major: the dense kernel's), ``codes_t`` ``[in, out]`` (input-major: the
    contiguous rows an event-driven product reads) and ``scale`` ``[out]``. ``counts``: the product reads spike
    counts, multiplied as they are. ``event_driven``: the crossover the product will run event-driven at (None:
    never, so no ``codes_t``; 1: always, so no ``codes``). A module, so that a traced step records the weights; its
    tensors are buffers left out of the state dict (the float weights are the checkpoint's)."""

    def __init__(self, name: str, linear: nn.Linear, counts: bool, event_driven: float | None = None):
        super().__init__()
        if linear.weight.device.type != "cpu" or linear.bias is not None:
            raise ConfigError(f"{name}: int8 kernels run bias-free products on a CPU")
        self.counts = counts
        codes, scale = quantize_weight(linear.weight, 8)
        dense = event_driven is None or event_driven < 1.0
        self.register_buffer("scale", scale.squeeze(1).contiguous(), persistent=False)
        self.register_buffer("codes", codes.contiguous() if dense else None, persistent=False)
        self.register_buffer("codes_t", None if event_driven is None else codes.t().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, event_driven: float | None = None) -> torch.Tensor:
        """``x`` ``[..., in]`` (one token per row: a decoding step) times the int8 weights. ``event_driven``: read only
        the int8 rows of the batch's nonzero inputs, unless more than that fraction of them is active."""
        if event_driven is None:
            return int8_linear(x, self.codes, self.scale, self.counts)
        return int8_sparse_linear(x, self.codes_t, self.scale, self.counts, event_driven, self.codes)
