"""8-bit weights for decoding on a CPU: every product of a model on the 8-bit grid runs an int8 kernel that torch
maintains, reading a quarter of the bytes an fp32 weight takes.

Two kernels were measured (``bench/int8_decode.py``, batch-1 products and the whole decoding step, this 2-core
CPU, torch 2.13):

- ``dynamic``: ``torch.ops.quantized.linear_dynamic`` (torch.ao dynamic quantization, fbgemm on x86): int8 weights
  with one scale per output channel (exactly the model's codes and scales), each call quantizing its input per
  tensor to 8 bits (7 with fbgemm's ``reduce_range``, which keeps its int16 partial sums from saturating) and
  accumulating in int32; one input scale per token, so a row's result never depends on the other rows (the
  engine's batch invariance). It runs the decoding steps (one token per sequence); prompts, read many tokens at
  once, keep the fp32 product of the same grid weights. The input rounding makes the product differ from the
  dequantized fp32 product by about 1% of its largest output (tests/core/test_int8_kernels.py), which can flip a
  spike near threshold (its cost in bits per byte: bench/hardware_study.py).
- ``weight_only``: ``torch._weight_int8pack_mm``: int8 weights, fp32 inputs and accumulation, within 2e-6 of the
  dequantized fp32 product; on this CPU its batch-1 product runs slower than fp32 (measured in the bench), so it
  is not the default.

The model's float weights stay in place (the energy report, saving and the parallel form read them); only the
forward of each ``nn.Linear`` changes.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .grids import quantize_weight, quantized_linears

INT8_KERNELS = ("dynamic", "weight_only")
DEFAULT_INT8_KERNEL = "dynamic"  # chosen by measurement: bench/int8_decode.py


def _dynamic_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3 and x.shape[1] > 1:  # a prompt (or a scored text): the fp32 product of the grid weights
        return F.linear(x, self.weight, self.bias)
    # Decoding: one input scale per token. A per-tensor scale over a batch would make a row's result depend on
    # the other rows (breaking the engine's batch invariance) and differ from the prompt's function.
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1:
        out = torch.ops.quantized.linear_dynamic(rows, self.int8_packed, True)
    else:
        out = torch.cat([torch.ops.quantized.linear_dynamic(row, self.int8_packed, True) for row in rows.split(1)])
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _weight_only_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    if flat.dtype != torch.float32:
        return F.linear(x, self.weight, self.bias)
    out = torch._weight_int8pack_mm(flat, self.int8_codes, self.int8_scales)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def use_int8_kernels_(model: nn.Module, kernel: str = DEFAULT_INT8_KERNEL) -> int:
    """Make every product of ``model`` (on the 8-bit grid, float32, on a CPU) run ``kernel``; returns how many.

    The codes and scales are recovered from the grid weights exactly (``quantize_weight`` of a grid is the grid)."""
    if kernel not in INT8_KERNELS:
        raise ConfigError(f"unknown int8 kernel {kernel!r}; choose one of {', '.join(INT8_KERNELS)}")
    if getattr(model.config, "weight_bits", None) != 8:
        raise ConfigError("int8 kernels need a model whose weights are on the 8-bit grid (weight_bits 8)")
    count = 0
    for name, linear in quantized_linears(model):
        if linear.weight.device.type != "cpu" or linear.bias is not None:
            raise ConfigError(f"{name}: int8 kernels run bias-free products on a CPU")
        codes, scale = quantize_weight(linear.weight, 8)
        if kernel == "dynamic":
            zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(codes, scale.squeeze(1).double(), zero_points, 0)
            linear.int8_packed = torch.ops.quantized.linear_prepack(qweight, None)
            linear.forward = types.MethodType(_dynamic_forward, linear)
        else:
            linear.int8_codes, linear.int8_scales = codes.contiguous(), scale.squeeze(1).contiguous()
            linear.forward = types.MethodType(_weight_only_forward, linear)
        count += 1
    return count
