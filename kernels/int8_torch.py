"""8-bit products on a CPU, defined in PyTorch: the reference for the compiled kernels (``int8_cpu``) and the path
that runs where they cannot be built.

Weights are int8 codes with one fp32 scale per output channel (``W ≈ codes · scales[:, None]``, the model's 8-bit
grid). Two kinds of input:

- real-valued rows (a LayerNorm output, the head's input): each row is quantized to int8 with its own scale
  ``sx = max|x| / 127`` and ``q = round(x / sx)``, the integer products are summed exactly, and
  ``y = float(Σ q·codes) · sx · scale``. One scale per row, so a row's result never depends on the other rows;
- spike counts (whole numbers, the inputs of the spike-driven placement): used as they are, no rounding, and
  ``y = float(Σ count·codes) · scale``. Only the weight rows of nonzero inputs contribute, which is what lets the
  event-driven kernel skip the others and still give the same bits as a dense one.

Every sum is an exact integer sum (float64 holds it exactly here), so the results do not depend on summation
order, thread count or the other rows of a batch; only the last two fp32 multiplications round, in the order
written above, which the compiled kernels follow to the bit.
"""

from __future__ import annotations

import torch

from .errors import KernelArgumentError

QMAX = 127


def check_int8_weight(codes: torch.Tensor, scales: torch.Tensor, input_major: bool) -> None:
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise KernelArgumentError(f"int8 products take int8 codes [out, in], got {codes.dtype} {list(codes.shape)}")
    out = codes.shape[1] if input_major else codes.shape[0]
    if scales.dtype != torch.float32 or scales.shape != (out,):
        raise KernelArgumentError(f"int8 products take fp32 scales [{out}], got {scales.dtype} {list(scales.shape)}")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[M, in]`` fp32 → (codes ``[M, in]`` int8, scales ``[M]`` fp32): ``sx = max|x| / 127``, ``q = round(x / sx)``
    (half to even); an all-zero row gets scale 0 and codes 0."""
    sx = x.abs().amax(dim=1) / QMAX
    safe = torch.where(sx > 0, sx, torch.ones_like(sx))
    q = torch.round(x / safe[:, None]).clamp_(-QMAX, QMAX)
    return q.to(torch.int8), sx


def _exact_sums(values: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``values @ codes.T`` of whole numbers, exact (float64 holds every sum of these sizes exactly)."""
    return values.to(torch.float64) @ codes.to(torch.float64).t()


def int8_linear_torch(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Real-valued x ``[M, in]`` fp32 times int8 ``codes`` ``[out, in]`` (output-major) with per-output ``scales``
    → ``[M, out]`` fp32, each row quantized to int8 on its own."""
    check_int8_weight(codes, scales, input_major=False)
    q, sx = quantize_rows(x.float())
    return _exact_sums(q, codes).to(torch.float32) * sx[:, None] * scales[None, :]


def int8_counts_linear_torch(counts: torch.Tensor, codes_t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Spike counts ``[M, in]`` (whole numbers, any dtype) times int8 weights stored input-major (``codes_t``
    ``[in, out]``) with per-output ``scales`` → ``[M, out]`` fp32. Zero inputs contribute nothing, so this is also
    the definition of the event-driven product."""
    check_int8_weight(codes_t, scales, input_major=True)
    return _exact_sums(counts, codes_t.t()).to(torch.float32) * scales[None, :]
