"""Quantized weights: symmetric integer grids with one scale per output channel, binarized weights, and the fake
quantization that quantization-aware training runs through.

Every ``nn.Linear`` of the model is quantized (the K/V/R/O projections of each block, the channel mixes and the
head): those are the products a crossbar or an integer datapath would hold. The embedding is a table read whose
output is thresholded into spikes, and the LayerNorms, decays and mixing ratios are per-channel vectors; they stay
in floating point.

    b bits (b >= 2)  codes q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1), s = max|w_row| / (2^(b-1) - 1)
    1 bit            codes q = sign(w) (0 counts as +1), s = mean|w_row|      (binarized weights with a scale,
                     the scale that minimises ||w - s·q||² for q = sign(w))
    dequantized      w_q = q · s

The grid is symmetric (no zero point): a crossbar stores ±w as a pair of conductances and an integer datapath
multiplies signed codes, so zero must be exact. A quantized checkpoint stores ``w_q`` in float32 and records
``weight_bits`` in its config: every loader reads it as an ordinary model that computes the quantized function,
and the codes come back from it exactly (``quantize_weight`` of a grid gives the same codes; the scales agree to
float32 rounding, exactly for 8 and 4 bits in practice since the row maximum sets them).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..modeling.config import WEIGHT_BITS, check_weight_bits  # noqa: F401 (WEIGHT_BITS: re-exported)


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` ``[out, in]`` → (int8 codes ``[out, in]``, float32 scales ``[out, 1]``), one scale per output channel.

    A row of zeros gets scale 0 and codes 0 (its dequantized row is zero again)."""
    check_weight_bits(bits)
    w = weight.detach().float()
    if bits == 1:
        scale = w.abs().mean(dim=1, keepdim=True)
        codes = torch.where(w >= 0, 1, -1).to(torch.int8)
        return codes, scale
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(w / safe).clamp_(-qmax, qmax).to(torch.int8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weights ``codes · scale``."""
    return codes.float() * scale


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return dequantize(*quantize_weight(weight, bits)).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The quantized weights in the forward (exactly the grid ``quantize_model_`` writes), the identity in the
    backward (the straight-through estimator): the loss sees the grid, the float master weights receive the
    gradient as if no rounding had happened."""
    return _StraightThrough.apply(weight, bits)


def quantized_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The products whose weights are quantized: every ``nn.Linear`` (blocks and head)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module


def model_weight_bits(model: nn.Module) -> int | None:
    """The width the model's product weights are stored at (None: floating point)."""
    return getattr(model.config, "weight_bits", None)


@torch.no_grad()
def quantize_model_(model: nn.Module, bits: int) -> nn.Module:
    """Post-training quantization in place: every product's weights onto the ``bits`` grid (float32 values, memory
    layout kept) and ``config.weight_bits`` set. A model already on a grid is only re-quantized to the same width
    (a no-op); a float model must compute in float32, the only dtype that holds every grid value exactly, and its
    product weights must be finite numbers."""
    check_weight_bits(bits)
    current = model_weight_bits(model)
    if current is not None and current != bits:
        raise ConfigError(
            f"the model's weights are already quantized to {current} bits; quantize its float original to {bits}"
        )
    linears = list(quantized_linears(model))
    for name, linear in linears:  # all checked before any is changed: a refused model is left as it was
        if linear.weight.dtype != torch.float32:
            raise ConfigError(f"{name}: quantized weights need float32 (got {linear.weight.dtype}); load in fp32")
        if not torch.isfinite(linear.weight).all():  # a NaN or infinite row would become a NaN scale
            raise ConfigError(f"{name}.weight holds values that are not finite numbers: no grid holds them")
    for _, linear in linears:
        linear.weight.copy_(dequantize(*quantize_weight(linear.weight, bits)))
    model.config.weight_bits = bits
    return model
