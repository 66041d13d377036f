"""8-bit weights for decoding on a CPU: the int8 codes and scales a product reads, and the int8 kernels that torch
maintains, reading a quarter of the bytes an fp32 weight takes. ``spikegpt.runtime.products`` puts them to work
(an int8 product module per projection, alone or event-driven).

Two kernels were measured (``bench/int8_decode.py``, batch-1 products and the whole decoding step, this 2-core
CPU, torch 2.13):

- ``dynamic``: ``torch.ops.quantized.linear_dynamic`` (torch.ao dynamic quantization, fbgemm on x86): int8 weights
  with one scale per output channel (exactly the model's codes and scales), each call quantizing its input per
  tensor to 8 bits (7 with fbgemm's ``reduce_range``, which keeps its int16 partial sums from saturating) and
  accumulating in int32; one input scale per token, so a row's result never depends on the other rows (the
  engine's batch invariance). The input rounding makes the product differ from the dequantized fp32 product by
  about 1% of its largest output (tests/quant/test_int8.py), which can flip a spike near threshold (its cost in
  bits per byte: bench/hardware_study.py).
- ``weight_only``: ``torch._weight_int8pack_mm``: int8 weights, fp32 inputs and accumulation, within 2e-6 of the
  dequantized fp32 product; on this CPU its batch-1 product runs slower than fp32 (measured in the bench), so it
  is not the default.

The event-driven int8 product (``spikegpt.kernels.int8_sparse_linear``: only the int8 rows of nonzero inputs)
follows either kernel's arithmetic. The model's float weights stay in place (the energy report, saving and the
parallel form read them).
"""

from __future__ import annotations

import torch
from torch import nn

from spikegpt.kernels import int8_sparse_linear

from ..errors import ConfigError
from .grids import model_weight_bits, quantize_weight

INT8_KERNELS = ("dynamic", "weight_only")
DEFAULT_INT8_KERNEL = "dynamic"  # chosen by measurement: bench/int8_decode.py


def check_int8_kernel(kernel: str) -> str:
    if kernel not in INT8_KERNELS:
        raise ConfigError(f"unknown int8 kernel {kernel!r}; choose one of {', '.join(INT8_KERNELS)}")
    return kernel


def check_int8_model(model: nn.Module) -> None:
    """Int8 products need a model whose product weights are on the 8-bit grid."""
    if model_weight_bits(model) != 8:
        raise ConfigError("int8 kernels need a model whose weights are on the 8-bit grid (weight_bits 8)")


class Int8Weights(nn.Module):
    """One product's weights as ``kernel`` reads them, recovered exactly from its grid weights (``quantize_weight``
    of a grid is the grid): ``packed`` (the dynamic kernel's prepacked codes and scales), ``codes`` ``[out, in]``
    (the weight-only kernel's), ``codes_t`` ``[in, out]`` (input-major: the contiguous rows an event-driven product
    reads; only when asked for) and ``scale`` ``[out]``. A module, so that a traced step records the packed
    weights; its tensors are buffers left out of the state dict (the float weights are the checkpoint's)."""

    def __init__(self, name: str, linear: nn.Linear, kernel: str, input_major: bool = False):
        super().__init__()
        self.kernel = check_int8_kernel(kernel)
        if linear.weight.device.type != "cpu" or linear.bias is not None:
            raise ConfigError(f"{name}: int8 kernels run bias-free products on a CPU")
        codes, scale = quantize_weight(linear.weight, 8)
        self.register_buffer("scale", scale.squeeze(1).contiguous(), persistent=False)
        self.register_buffer("codes", codes.contiguous() if kernel == "weight_only" else None, persistent=False)
        self.register_buffer("codes_t", codes.t().contiguous() if input_major else None, persistent=False)
        self.packed = None
        if kernel == "dynamic":
            zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(codes, scale.squeeze(1).double(), zero_points, 0)
            self.packed = torch.ops.quantized.linear_prepack(qweight, None)

    def forward(self, x: torch.Tensor, event_driven: float | None = None) -> torch.Tensor:
        """``x`` ``[..., in]`` (float32, one token per row: a decoding step) times the int8 weights. ``event_driven``:
        read only the int8 rows of nonzero inputs in rows at most that dense (``int8_sparse_linear``)."""
        rows = x.reshape(-1, x.shape[-1])
        if event_driven is not None:
            out = int8_sparse_linear(rows, self.codes_t, self.scale, event_driven, self.kernel == "dynamic")
        elif self.kernel == "weight_only":
            out = torch._weight_int8pack_mm(rows.contiguous(), self.codes, self.scale)
        elif rows.shape[0] == 1:
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        else:
            # one input scale per token: a per-tensor scale over a batch would make a row's result depend on the
            # other rows (breaking the engine's batch invariance)
            out = torch.cat([torch.ops.quantized.linear_dynamic(row, self.packed, True) for row in rows.split(1)])
        return out.reshape(*x.shape[:-1], out.shape[-1])
