"""8-bit products, defined in PyTorch: the definition the compiled CPU kernels (``int8_cpu``) and the Triton kernel
(``sparse_triton.int8_counts_linear_triton``) follow to the bit, and the path that runs where they cannot.

Weights are int8 codes with one fp32 scale per output channel (``W ≈ codes · scales[:, None]``, the model's 8-bit
grid). Each row of the input becomes whole numbers ``q`` with a row scale ``sx`` first, in one of two ways, fixed by
what the product reads (``counts``):

- real values (a LayerNorm output, the head's input; ``counts=False``): quantized per row, ``sx = max|x| / 127`` and
  ``q = round(x / sx)`` (half to even); one scale per row, so a row's result never depends on the other rows. An
  all-zero row gets ``sx = 0``; a row holding a value that is not finite gets ``sx = NaN`` (its outputs are NaN,
  as the fp32 product's would be not finite);
- spike counts (the inputs of the spike-driven placement; ``counts=True``): whole numbers used as they are, no
  rounding and no row scale. They must be whole numbers of at most 32767 whose magnitudes add up, per row, to at
  most ``MAX_ROW_MAGNITUDE`` (so that every sum fits an int32 exactly).

Then ``y = float(Σ q·codes) · sx · scale`` (counts: ``float(Σ q·codes) · scale``). Every sum is an exact integer sum
(float64 holds it exactly here), so the result depends neither on the order of the sums, the thread count, the
other rows of a batch nor on which weights are read: zero inputs contribute nothing, so the event-driven product
(only the weight rows of nonzero inputs, ``int8_sparse_linear``) is this same function. Only the last fp32
multiplications round, in the order written above, which the compiled kernels follow.

``int8_linear_torch`` takes the codes in any layout (output-major ``[out, in]``, or an input-major weight as
``codes_t.t()``).
"""

from __future__ import annotations

import torch

from .errors import KernelArgumentError

QMAX = 127
MAX_COUNT = 32767  # a count is multiplied as a 16-bit integer
MAX_ROW_MAGNITUDE = 2**31 // QMAX - 1  # Σ|count| · 127 < 2^31: the int32 sums stay exact


def check_int8_weight(codes: torch.Tensor, scales: torch.Tensor, input_major: bool) -> None:
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise KernelArgumentError(f"int8 products take int8 codes [out, in], got {codes.dtype} {list(codes.shape)}")
    out = codes.shape[1] if input_major else codes.shape[0]
    if scales.dtype != torch.float32 or scales.shape != (out,):
        raise KernelArgumentError(f"int8 products take fp32 scales [{out}], got {scales.dtype} {list(scales.shape)}")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[M, in]`` fp32 → (codes ``[M, in]`` int8, scales ``[M]`` fp32): ``sx = max|x| / 127``, ``q = round(x / sx)``
    (half to even); an all-zero row gets scale 0 and codes 0, a row with a value that is not finite scale NaN and
    codes 0."""
    finite = torch.isfinite(x).all(dim=1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    sx = x.abs().amax(dim=1) / QMAX
    safe = torch.where(sx > 0, sx, torch.ones_like(sx))
    q = torch.round(x / safe[:, None]).clamp_(-QMAX, QMAX)  # (the clamp only matters where sx is subnormal)
    return q.to(torch.int8), torch.where(finite, sx, torch.full_like(sx, float("nan")))


def check_counts(counts: torch.Tensor) -> None:
    """Raise ``KernelArgumentError`` unless ``counts`` ``[M, in]`` are whole numbers a count product takes."""
    if counts.numel() == 0:
        return
    values = counts.double()
    finite = bool(torch.isfinite(values).all())
    if not finite or not bool((values == values.round()).all()) or bool(values.abs().max() > MAX_COUNT):
        raise KernelArgumentError(
            f"int8 counts products take whole-number inputs (spike counts) of at most {MAX_COUNT}"
        )
    if bool(values.abs().sum(dim=1).max() > MAX_ROW_MAGNITUDE):
        raise KernelArgumentError(
            f"int8 counts products: a row's counts add up to more than {MAX_ROW_MAGNITUDE}, beyond exact int32 sums"
        )


def int8_linear_torch(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, counts: bool = False) -> torch.Tensor:
    """x ``[M, in]`` times the int8 ``codes`` ``[out, in]`` (any layout) with per-output ``scales`` → ``[M, out]``
    fp32: real-valued rows quantized per row, or (``counts``) whole numbers used as they are (module docstring)."""
    if counts:
        check_counts(x)
        return _exact_sums(x, codes).to(torch.float32) * scales[None, :]
    q, sx = quantize_rows(x.float())
    return _exact_sums(q, codes).to(torch.float32) * sx[:, None] * scales[None, :]


def _exact_sums(values: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``values @ codes.T`` of whole numbers, exact (float64 holds every sum of these sizes exactly)."""
    return values.to(torch.float64) @ codes.to(torch.float64).t()
