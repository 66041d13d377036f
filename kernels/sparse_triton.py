"""Event-driven products in Triton: ``y = x @ W.T`` reading only the weight rows of the batch's active inputs.

On a GPU one weight row is read once for the whole batch, so what the product costs follows the union of the
rows' active inputs. The union is compacted on the device at a fixed capacity (a cumulative sum and a scatter, no
data-dependent shape and no host synchronisation): ``index`` ``[in]`` lists the active inputs first, ``count``
``[1]`` says how many. Each program then owns ``BLOCK_N`` outputs of ``BLOCK_M`` rows and walks the active inputs
``BLOCK_K`` at a time (the trip count is loaded from ``count``), loading ``x[:, i]`` and the row
``W.T[i, n-block]`` of each: with the weight input-major the loads along the outputs are contiguous and coalesced.
Each output is accumulated in index order, one active input after another (no reduction tree), so a row's result
does not depend on which inputs the other rows activated (theirs add exact zeros). Accumulation is fp32 (fp64 for
fp64 weights); the output has the weight's dtype. Only Triton built-ins are called (see ``triton_support``).

The 8-bit form (``int8_counts_linear_triton``) runs the same kernel on int8 weights and whole-number inputs (spike
counts) with int32 accumulation, then multiplies each output by its channel's scale: exact integer sums, so it
equals the PyTorch reference (``int8_torch.int8_linear_torch`` with ``counts``) to the bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_support as support

BLOCK_K = 16  # active inputs per iteration
MAX_BLOCK_N = 128  # outputs per program
MAX_BLOCK_M = 16  # batch rows per program


def _sparse_linear_kernel(
    x_ptr,  # [M, K], contiguous
    w_ptr,  # weight [N, K] with strides (stride_wn, stride_wk)
    index_ptr,  # [K] int64: the active inputs first
    count_ptr,  # [1] int64: how many
    y_ptr,  # [M, N]
    scale_ptr,  # [N] fp32 output scales (read only when SCALED)
    M,
    N,
    K,
    stride_wn,
    stride_wk,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,  # outputs per program (the launch helper's name for the tile width)
    SCALED: tl.constexpr,  # 8-bit weights: integer sums times a per-output scale
):
    ns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    nmask = ns < N
    mmask = ms < M
    count = tl.load(count_ptr)
    acc = tl.full([BLOCK_M, BLOCK_C], 0, ACC)
    for start in range(0, count, BLOCK_K):
        for j in tl.static_range(BLOCK_K):  # unrolled: the BLOCK_K rows' loads are in flight together
            live = start + j < count
            row = tl.load(index_ptr + start + j, mask=live, other=0)
            xs = tl.load(x_ptr + ms.to(tl.int64) * K + row, mask=mmask & live, other=0).to(ACC)
            ws = tl.load(w_ptr + row * stride_wk + ns.to(tl.int64) * stride_wn, mask=nmask & live, other=0).to(ACC)
            acc += xs[:, None] * ws[None, :]
    out = y_ptr + ms[:, None].to(tl.int64) * N + ns[None, :]
    if SCALED:
        scale = tl.load(scale_ptr + ns, mask=nmask, other=0)
        result = acc.to(tl.float32) * scale[None, :]
    else:
        result = acc
    tl.store(out, result.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def active_union(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [K], count [1])``: the inputs nonzero in any row of ``x`` ``[M, K]``, compacted at the front of a
    fixed-size index (the rest of it is never read), and how many there are; computed on ``x``'s device."""
    active = x.ne(0).any(dim=0)
    k = active.shape[0]
    position = torch.where(active, torch.cumsum(active, dim=0) - 1, k)  # inactive inputs go to a spare slot
    index = torch.zeros(k + 1, dtype=torch.int64, device=x.device)
    index.scatter_(0, position, torch.arange(k, device=x.device))
    return index[:k], active.sum().reshape(1)


def _launch_sparse(x, weight, union, y, acc, scales=None) -> None:
    """Launch the kernel for ``x`` ``[M, in]`` and ``weight`` ``[out, in]`` (any strides) into ``y`` ``[M, out]``."""
    m, k = x.shape
    n = weight.shape[0]
    index, count = union if union is not None else active_union(x)
    block_n = min(MAX_BLOCK_N, max(16, triton.next_power_of_2(n)))
    block_m = min(MAX_BLOCK_M, triton.next_power_of_2(max(m, 1)))
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    support.launch(
        _sparse_linear_kernel,
        grid,
        (x, weight, index, count, y, y if scales is None else scales, m, n, k, weight.stride(0), weight.stride(1)),
        ACC=acc,
        BLOCK_M=block_m,
        BLOCK_K=BLOCK_K,
        BLOCK_C=block_n,
        SCALED=scales is not None,
    )


def sparse_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    union: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x`` ``[M, in]`` (floating or integer) times ``weight`` ``[out, in]``ᵀ → ``[M, out]`` in the weight's dtype,
    reading only the weight rows of the batch's active inputs. ``union``: ``active_union(x)`` if already known."""
    support.check_device(x)
    acc = support.accumulator(weight.dtype)
    x = x.contiguous()
    y = support.empty((x.shape[0], weight.shape[0]), weight.dtype, x.device)
    _launch_sparse(x, weight, union, y, acc)
    return y


def int8_counts_linear_triton(
    counts: torch.Tensor,
    codes_t: torch.Tensor,
    scales: torch.Tensor,
    union: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Spike counts ``[M, in]`` (whole numbers) times int8 weights stored input-major (``codes_t`` ``[in, out]``)
    with fp32 ``scales`` ``[out]`` → ``[M, out]`` fp32: int32 sums over the batch's active inputs, then scaled."""
    support.check_device(counts)
    counts = counts.contiguous()
    y = support.empty((counts.shape[0], codes_t.shape[1]), torch.float32, counts.device)
    _launch_sparse(counts, codes_t.t(), union, y, tl.int32, scales.contiguous())
    return y
