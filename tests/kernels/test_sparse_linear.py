"""Event-driven products (``spikegpt.kernels.sparse_linear``) against the dense product in float64, over densities
from 0 to 100%, both weight layouts, several dtypes, odd shapes and real, binary and integer inputs; the Triton
kernel against the same definition under Triton's interpreter with NaN-filled outputs; the crossover decision.

Tolerance: a sum of n products in a dtype with unit roundoff u is off by at most n·u·Σ|x_i·w_i| (the classic
γ_n bound); the tests allow that with n = the input width, plus one rounding of the output. For binary inputs
every product term is exact, so the event-driven sum is the index-ordered sum of the active rows, bit for bit.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import interpreted_triton  # noqa: F401  (autouse: interpreter, NaN-filled outputs)

from spikegpt.kernels import KernelArgumentError, reload_kernel_backend, sparse_linear, sparse_torch
from spikegpt.kernels.sparse_torch import sparse_linear_torch
from spikegpt.kernels.sparse_triton import active_union, sparse_linear_triton

DENSITIES = (0.0, 0.05, 0.3, 0.6, 1.0)
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def inputs(rows, n_in, density, *, kind="real", seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, n_in, generator=g) < density
    if kind == "binary":
        return mask.to(dtype)
    if kind == "counts":  # integer spike counts
        return torch.randint(1, 4, (rows, n_in), generator=g) * mask
    return (torch.randn(rows, n_in, generator=g) * mask).to(dtype)


def weight_of(n_out, n_in, *, seed, dtype=torch.float32, layout="input-major"):
    w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return w.t().contiguous().t() if layout == "input-major" else w.contiguous()


def assert_close_to_definition(y, x, w):
    exact = x.double() @ w.double().t()
    magnitude = x.double().abs() @ w.double().abs().t()
    u = UNIT_ROUNDOFF[w.dtype]
    allowed = x.shape[1] * u * magnitude + u * exact.abs()
    assert y.dtype == w.dtype and y.shape == exact.shape
    assert torch.isfinite(y).all(), "NaN or inf in the output"
    assert ((y.double() - exact).abs() <= allowed).all()


def products_over_shapes(products, shapes, density, layout, dtype, seed):
    for rows, n_in, n_out in shapes:
        x = inputs(rows, n_in, density, seed=seed, dtype=dtype)
        w = weight_of(n_out, n_in, seed=seed, dtype=dtype, layout=layout)
        for product in products:
            assert_close_to_definition(product(x, w), x, w)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("layout", ["input-major", "output-major"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_path_equals_the_dense_product(density, layout, dtype, seed):
    products = (sparse_linear, lambda x, w: sparse_linear_torch(x, w, 0.5))
    products_over_shapes(products, ((1, 37, 45), (5, 64, 3), (3, 1, 17)), density, layout, dtype, seed)


@pytest.mark.parametrize("kind", ["binary", "counts"])
def test_spike_inputs(kind, seed):
    x = inputs(4, 50, 0.2, kind=kind, seed=seed)
    w = weight_of(33, 50, seed=seed)
    y = sparse_linear(x[:, None], w)  # [B, T=1, in] as in a decoding step
    assert y.shape == (4, 1, 33)
    assert_close_to_definition(y[:, 0], x, w)


def test_binary_inputs_sum_the_active_rows_exactly(seed):
    """Every term of a binary product is a weight: the result is the sum of the active rows in index order."""
    x = inputs(3, 80, 0.25, kind="binary", seed=seed)
    w = weight_of(40, 80, seed=seed)
    y = sparse_linear(x, w)
    for row in range(3):
        active = x[row].nonzero().squeeze(1).tolist()
        expected = functools.reduce(torch.add, (w[:, i] for i in active), torch.zeros(40))
        assert torch.equal(y[row], expected)


def test_a_rows_result_does_not_depend_on_the_other_rows(seed):
    """Batch invariance at the engine's fixed batch shape: whatever the other rows are (sparser or denser than the
    crossover), a row gives the same bits; an event-driven row gives them alone too."""
    w = weight_of(30, 64, seed=seed)
    batch = torch.cat([inputs(3, 64, 0.1, seed=seed), inputs(3, 64, 0.9, seed=seed + 5)])
    together = sparse_linear(batch, w, 0.5)
    others = torch.cat([inputs(3, 64, 0.9, seed=seed + 7), inputs(3, 64, 0.1, seed=seed + 9)])
    for row in range(batch.shape[0]):
        changed = others.clone()
        changed[row] = batch[row]
        assert torch.equal(sparse_linear(changed, w, 0.5)[row], together[row])
        if row < 3:
            assert torch.equal(sparse_linear(batch[row : row + 1], w, 0.5)[0], together[row])


def test_the_crossover_sends_a_dense_batch_to_the_dense_product(monkeypatch, seed):
    calls = []
    event_driven = sparse_torch._active_rows_product
    monkeypatch.setattr(
        sparse_torch, "_active_rows_product", lambda *a: calls.append(a[0].shape[0]) or event_driven(*a)
    )
    w = weight_of(20, 100, seed=seed)
    dense_batch = inputs(16, 100, 0.8, seed=seed)
    assert torch.equal(sparse_linear(dense_batch, w, 0.3), F.linear(dense_batch, w))
    assert calls == []
    sparse_batch = inputs(16, 100, 0.1, seed=seed)
    assert_close_to_definition(sparse_linear(sparse_batch, w, 0.3), sparse_batch, w)
    assert calls == [16]
    mixed = torch.cat([dense_batch[:2], sparse_batch[:3]])
    assert_close_to_definition(sparse_linear(mixed, w, 0.3), mixed, w)
    assert calls == [16, 3]  # only the sparse rows were summed event-driven


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("layout", ["input-major", "output-major"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_triton_kernel_equals_the_definition(density, layout, dtype, seed):
    shapes = ((1, 37, 45), (3, 20, 130), (17, 5, 1))
    products_over_shapes((sparse_linear_triton,), shapes, density, layout, dtype, seed)


def test_triton_kernel_on_spike_counts_and_through_the_dispatch(monkeypatch, seed):
    x = inputs(2, 24, 0.3, kind="counts", seed=seed)
    w = weight_of(19, 24, seed=seed)
    assert_close_to_definition(sparse_linear_triton(x, w), x, w)
    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    reload_kernel_backend()
    called = []
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: called.append(1) or torch.matmul(a[0], a[1].t()))
    xf = x.float()
    assert_close_to_definition(sparse_linear(xf, w, 0.9), xf, w)  # union below the crossover: the kernel
    assert called == []
    assert_close_to_definition(sparse_linear(torch.ones(2, 24), w, 0.5), torch.ones(2, 24), w)  # falls back
    assert called == [1]


def test_active_union_compacts_the_active_inputs_at_a_fixed_size():
    x = torch.tensor([[0.0, 2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0, 0.0]])
    index, count = active_union(x)
    assert index.shape == (5,) and count.tolist() == [3]
    assert index[:3].tolist() == [1, 3, 4]
    assert active_union(torch.zeros(2, 4))[1].tolist() == [0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_trace_records_one_call_and_keeps_the_sparsity(seed):
    """torch.jit.trace records the operator as one node; the traced function then decides at every call."""
    w = weight_of(12, 40, seed=seed)

    def product(x):
        return sparse_linear(torch.relu(x), w, 0.5)

    traced = torch.jit.trace(product, torch.randn(2, 40), check_trace=False)
    assert "spikegpt::sparse_linear" in str(traced.graph)
    for density in (0.1, 0.9):
        x = inputs(2, 40, density, seed=seed + 3)
        assert torch.equal(traced(x), product(x))


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(KernelArgumentError, match=r"x \[\.\.\., in\] and weight \[out, in\]"):
        sparse_linear(torch.zeros(2, 5), torch.zeros(3, 4))
    with pytest.raises(KernelArgumentError, match="share a dtype"):
        sparse_linear(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(3, 4))


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize(("rows", "n_in", "n_out"), [(1, 37, 70), (5, 64, 33)])
def test_the_int8_triton_kernel_equals_the_reference_to_the_bit(seed, density, rows, n_in, n_out):
    """Spike counts (signed, up to 4) times int8 weights: int32 sums then one fp32 scale per output, as the
    reference; the interpreter's outputs start as NaN, so an unwritten element fails the comparison."""
    from spikegpt.kernels.int8_torch import int8_linear_torch
    from spikegpt.kernels.sparse_triton import int8_counts_linear_triton

    g = torch.Generator().manual_seed(seed)
    counts = inputs(rows, n_in, density, kind="counts", seed=seed).float() * (torch.randint(0, 2, (rows, n_in)) * 2 - 1)
    codes_t = torch.randint(-127, 128, (n_in, n_out), dtype=torch.int8, generator=g)
    scales = torch.rand(n_out, generator=g) / 100
    y = int8_counts_linear_triton(counts, codes_t, scales)
    assert torch.equal(y, int8_linear_torch(counts, codes_t.t(), scales, counts=True))


def test_the_int8_event_driven_dispatch_runs_triton_for_counts(monkeypatch, seed):
    """``SPIKEGPT_KERNELS=triton``: spike counts go to the Triton kernel (real-valued rows keep the reference,
    which quantizes them first); both give the reference's bits."""
    from spikegpt.kernels import int8_sparse_linear, sparse_triton
    from spikegpt.kernels.int8_torch import int8_linear_torch

    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    reload_kernel_backend()
    launched = []
    kernel = sparse_triton.int8_counts_linear_triton
    monkeypatch.setattr(sparse_triton, "int8_counts_linear_triton", lambda *a: launched.append(1) or kernel(*a))
    g = torch.Generator().manual_seed(seed)
    codes_t = torch.randint(-127, 128, (40, 24), dtype=torch.int8, generator=g)
    scales = torch.rand(24, generator=g) / 100
    counts = inputs(3, 40, 0.3, kind="counts", seed=seed).float()
    assert torch.equal(int8_sparse_linear(counts, codes_t, scales, counts=True),
                       int8_linear_torch(counts, codes_t.t(), scales, counts=True))  # fmt: skip
    assert launched == [1]
    x = inputs(3, 40, 0.3, seed=seed)
    assert torch.equal(int8_sparse_linear(x, codes_t, scales), int8_linear_torch(x, codes_t.t(), scales))
    assert launched == [1]
