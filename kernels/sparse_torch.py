"""Event-driven products on a CPU: ``y = x @ W.T`` that reads only the weight rows ``W.T[i]`` of nonzero ``x[:, i]``.

The definition is the dense product; this is the CPU path. With the weight stored input-major (``W.T`` contiguous,
``[in, out]``: the layout the engine gives every decoding Linear) the active rows are contiguous runs of memory,
and ``F.embedding_bag(mode="sum", per_sample_weights=x)`` adds them up scaled by the inputs in one fused pass
(torch's own kernel, fbgemm on x86), without first copying them out. Measured on the 2-core development machine
(``bench/crossover.py``), it beat both ``index_select`` of the active rows + a matmul (which pays the copy, and a
page-faulting allocation for a large head) and a CSR ``torch.sparse.mm``.

Each row of ``x`` is its own bag: its result is the sum of its own active rows, in index order, so it depends on
nothing but the row (the engine's batch invariance) and, for binary or small-integer inputs, differs from the dense
product only by summation order. Rows denser than ``max_density`` are computed by the dense product, whose cost
does not grow with the number of active inputs; which rows go which way is decided row by row, so a row's result
never depends on the other rows of the batch.

An output-major weight (``W`` contiguous) is accepted too: the product then gathers the batch's active columns and
multiplies them (correct, but without the contiguous rows it saves little; the engine never decodes that way).

The same product over 8-bit weights is ``int8_sparse_linear`` (``int8_torch`` defines it, ``int8_cpu`` runs it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def input_major(weight: torch.Tensor) -> bool:
    """Whether ``weight`` ``[out, in]`` is stored with each input's row of outputs contiguous (``W.T`` contiguous)."""
    return weight.t().is_contiguous()


def sparse_linear_torch(x: torch.Tensor, weight: torch.Tensor, max_density: float = 1.0) -> torch.Tensor:
    """``x`` ``[M, in]`` (floating or integer) times ``weight`` ``[out, in]``ᵀ → ``[M, out]`` in the weight's dtype.

    Rows with at most ``max_density · in`` nonzero inputs are computed from their active weight rows only, the
    others by the dense product: at ``max_density = 1`` every row is event-driven, at 0 only all-zero rows.
    """
    if x.shape[0] == 1 and input_major(weight):  # batch-1 decoding: the fewest operations
        cols = x[0].nonzero().squeeze(1)
        if cols.numel() > max_density * x.shape[1]:
            return F.linear(x.to(weight.dtype), weight)
        if cols.numel() == 0:  # (a bag of fixed length 0 is refused)
            return torch.zeros(1, weight.shape[0], dtype=weight.dtype, device=x.device)
        values = x[0, cols].to(weight.dtype)
        return F.embedding_bag(cols[None], weight.t(), mode="sum", per_sample_weights=values[None])
    nnz = torch.count_nonzero(x, dim=1)
    if max_density >= 1.0:
        return _active_rows_product(x, weight, nnz)
    sparse_rows = nnz <= max_density * x.shape[1]
    n_sparse = int(sparse_rows.sum())  # the one host read of the decision
    if n_sparse == 0:
        return F.linear(x.to(weight.dtype), weight)
    if n_sparse == x.shape[0]:
        return _active_rows_product(x, weight, nnz)
    # Mixed: the dense rows come from the full fixed-shape product (a row's result in it does not depend on the
    # other rows' values), the sparse rows are overwritten with their event-driven sums.
    y = F.linear(x.to(weight.dtype), weight)
    rows = sparse_rows.nonzero().squeeze(1)
    y[rows] = _active_rows_product(x[rows], weight, nnz[rows])
    return y


def _active_rows_product(x: torch.Tensor, weight: torch.Tensor, nnz: torch.Tensor) -> torch.Tensor:
    if not input_major(weight):
        columns = x.ne(0).any(dim=0).nonzero().squeeze(1)
        return F.linear(x.index_select(1, columns).to(weight.dtype), weight.index_select(1, columns))
    rows, cols = x.nonzero(as_tuple=True)  # row-major order: each row's active inputs, in index order
    offsets = torch.cumsum(nnz, dim=0) - nnz
    return F.embedding_bag(cols, weight.t(), offsets, mode="sum", per_sample_weights=x[rows, cols].to(weight.dtype))
