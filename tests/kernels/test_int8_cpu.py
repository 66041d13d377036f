"""The 8-bit CPU products: the PyTorch reference against a hand computation and against the fp32 product of the grid
weights, and the compiled kernels (``kernels/csrc/int8_cpu.cpp``; dense and event-driven) against the reference, to
the bit, over densities 0-100%, odd shapes, batch sizes, thread counts and both kinds of input (spike counts, real
values); outputs every element of which is written (NaN-poisoned memory), empty active sets, the crossover inside
the event-driven call, refused inputs, and the fallback where the kernels cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from spikegpt.kernels import KernelArgumentError, int8_cpu, int8_linear, int8_sparse_linear, reload_kernel_backend
from spikegpt.kernels.int8_torch import MAX_ROW_MAGNITUDE, int8_linear_torch, quantize_rows

SHAPES = [(1, 1), (7, 5), (33, 63), (257, 300), (768, 129)]  # (in, out): below, across and beyond a vector
DENSITIES = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]


def weight(out: int, inp: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=generator)
    return codes, torch.rand(out, generator=generator) / 100 + 1e-4


def counts(rows: int, inp: int, density: float, generator: torch.Generator, k: int = 4) -> torch.Tensor:
    sign = torch.randint(0, 2, (rows, inp), generator=generator) * 2 - 1
    values = torch.randint(1, k + 1, (rows, inp), generator=generator) * sign
    active = torch.rand(rows, inp, generator=generator) < density
    return (values * active).float()


def real(rows: int, inp: int, density: float, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, inp, generator=generator) * torch.rand(rows, 1, generator=generator) * 10
    return x * (torch.rand(rows, inp, generator=generator) < density)


INPUTS = {"counts": counts, "real": real}


@pytest.fixture
def compiled():
    if not int8_cpu.available():
        pytest.skip("the compiled int8 kernels cannot be built on this machine (the reference runs instead)")
    return True


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 2])
def test_the_kernels_run_on_as_many_threads_as_torch_is_given(compiled, n):
    """The kernels' parallel loops are OpenMP inside ATen's headers: built without ``-fopenmp`` they run on one
    thread, with the same results, so only this count shows it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        assert torch.ops.spikegpt_cpu.parallel_threads(64) == n
    finally:
        torch.set_num_threads(before)


def test_the_reference_against_a_hand_computation():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]])
    codes = torch.tensor([[1, 2, 3], [-127, 0, 127]], dtype=torch.int8)
    scales = torch.tensor([0.5, 0.25])
    q, sx = quantize_rows(x)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]  # 0.5 / (1/127) = 63.5 rounds half to even
    assert sx.tolist() == [torch.tensor(1.0 / 127).item(), 0.0]  # fp32
    expected = [[(64 - 254 + 96) * (1.0 / 127) * 0.5, (-127 * 64 + 127 * 32) * (1.0 / 127) * 0.25], [0.0, 0.0]]
    assert torch.allclose(int8_linear_torch(x, codes, scales), torch.tensor(expected), rtol=1e-6, atol=0)
    c = torch.tensor([[2.0, 0.0, -1.0]])
    assert int8_linear_torch(c, codes, scales, counts=True).tolist() == [[(2 - 3) * 0.5, -381 * 0.25]]


def test_counts_give_the_fp32_product_of_the_grid_weights(seed):
    """Counts are not rounded: only each output's last two roundings (to fp32, times the scale) separate the int8
    product from the exact product of the grid weights."""
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(300, 257, g)
    c = counts(4, 257, 0.3, g)
    exact = c.double() @ (codes.double() * scales.double()[:, None]).t()
    assert torch.allclose(int8_linear_torch(c, codes, scales, counts=True).double(), exact, rtol=2**-22, atol=0)


@pytest.mark.parametrize(("inp", "out"), SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_dense_products_equal_the_reference_to_the_bit(compiled, threads, seed, inp, out, rows, kind):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(out, inp, g)
    x = INPUTS[kind](rows, inp, 0.7, g)
    x[0] = 0.0 if rows > 2 else x[0]  # an all-zero row: scale 0
    y = int8_linear(x, codes, scales, counts=kind == "counts")
    assert torch.isfinite(y).all() and torch.equal(y, int8_linear_torch(x, codes, scales, kind == "counts"))


@pytest.mark.parametrize(("inp", "out"), SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_event_driven_products_equal_the_reference_to_the_bit(compiled, threads, seed, inp, out, density, rows, kind):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(out, inp, g)
    x = INPUTS[kind](rows, inp, density, g)
    y = int8_sparse_linear(x, codes.t().contiguous(), scales, counts=kind == "counts")
    assert torch.isfinite(y).all() and torch.equal(y, int8_linear_torch(x, codes, scales, kind == "counts"))
    if density == 0.0:
        assert not y.any()  # an empty active set reads no row and gives exact zeros


@pytest.mark.parametrize("density", [0.0, 0.1, 0.9])
def test_the_crossover_inside_the_call_keeps_the_bits(compiled, seed, density):
    """Denser than ``max_density``, the dense kernel runs on the output-major codes: the same exact sums."""
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(130, 200, g)
    x = counts(16, 200, density, g)
    expected = int8_linear_torch(x, codes, scales, counts=True)
    for max_density in (0.0, 0.5, 1.0):
        y = int8_sparse_linear(x, codes.t().contiguous(), scales, True, max_density, codes)
        assert torch.equal(y, expected), max_density


def _poisoned_call(fn, args: tuple, shape: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """``fn(*args)`` right after freeing a NaN-filled fp32 block of its output's size: the allocator hands the same
    memory back (checked by address), so an output element the kernel never writes stays NaN."""
    poison = torch.full(shape, float("nan"))
    address = poison.data_ptr()
    del poison
    y = fn(*args)
    return y, y.data_ptr() == address


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_output_element_is_written(compiled, threads, seed, kind):
    g = torch.Generator().manual_seed(seed)
    reused = 0
    for (inp, out), density in zip(SHAPES[1:], (0.0, 0.05, 0.5, 1.0), strict=True):
        codes, scales = weight(out, inp, g)
        codes_t = codes.t().contiguous()
        x = INPUTS[kind](5, inp, density, g)
        expected = int8_linear_torch(x, codes, scales, kind == "counts")
        for fn, weights in ((int8_linear, codes), (int8_sparse_linear, codes_t)):
            y, same_memory = _poisoned_call(fn, (x, weights, scales, kind == "counts"), (5, out))
            reused += same_memory
            assert torch.equal(y, expected)
    assert reused > 0, "the allocator never handed the poisoned memory back: nothing was checked"


def test_a_rows_bits_do_not_depend_on_the_batch(compiled, seed):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(300, 257, g)
    codes_t = codes.t().contiguous()
    batch = counts(16, 257, 0.2, g)
    alone = int8_sparse_linear(batch[5:6], codes_t, scales, counts=True)
    assert torch.equal(int8_sparse_linear(batch, codes_t, scales, counts=True)[5:6], alone)
    x = real(16, 257, 0.3, g)
    x[3] *= 1000.0  # a loud neighbour would change a per-batch input scale
    assert torch.equal(int8_linear(x, codes, scales)[7:8], int8_linear(x[7:8], codes, scales))
    assert torch.equal(int8_sparse_linear(x, codes_t, scales)[7:8], int8_linear(x[7:8], codes, scales))


def test_a_row_with_a_value_that_is_not_finite_gives_nan_outputs(seed, int8_backend):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(9, 7, g)
    x = torch.randn(3, 7, generator=g)
    x[1, 2], x[2, 0] = float("nan"), float("inf")
    for y in (int8_linear(x, codes, scales), int8_sparse_linear(x, codes.t().contiguous(), scales)):
        assert torch.isfinite(y[0]).all() and torch.isnan(y[1:]).all()
        assert torch.equal(y[:1], int8_linear_torch(x[:1], codes, scales))


def test_counts_that_are_not_whole_numbers_or_too_large_are_refused(seed, int8_backend):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(5, 7, g)
    codes_t = codes.t().contiguous()
    for bad in (torch.full((1, 7), 0.5), torch.full((1, 7), float("nan")), torch.full((1, 7), 40000.0)):
        with pytest.raises(KernelArgumentError, match="whole-number"):
            int8_sparse_linear(bad, codes_t, scales, counts=True)
        with pytest.raises(KernelArgumentError, match="whole-number"):
            int8_linear(bad, codes, scales, counts=True)
    wide = torch.full((1, 70_000), 32_000.0)  # each count allowed, their sum beyond exact int32 sums
    assert wide.abs().sum() > MAX_ROW_MAGNITUDE
    with pytest.raises(KernelArgumentError, match="add up"):
        int8_linear(wide, torch.zeros(2, 70_000, dtype=torch.int8), torch.ones(2), counts=True)


def test_wrong_weights_are_refused():
    with pytest.raises(KernelArgumentError, match="int8 codes"):
        int8_linear(torch.zeros(1, 3), torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(KernelArgumentError, match="scales"):
        int8_linear(torch.zeros(1, 3), torch.zeros(2, 3, dtype=torch.int8), torch.ones(3))
    with pytest.raises(KernelArgumentError, match=r"x \[\.\.\., 3\]"):
        int8_sparse_linear(torch.zeros(1, 4), torch.zeros(3, 2, dtype=torch.int8), torch.ones(2))


def test_the_compiled_operator_refuses_dense_codes_of_another_shape(compiled):
    """Called directly (a traced step does), the event-driven operator checks its dense codes at every call, even
    one that stays event-driven: wrong ones would be read and written past their ends above the crossover."""
    codes_t, scales = torch.zeros(4, 2, dtype=torch.int8), torch.ones(2)
    for wrong in (torch.zeros(3, 4, dtype=torch.int8), torch.zeros(2, 5, dtype=torch.int8)):
        for max_density in (0.0, 1.0):
            with pytest.raises(RuntimeError, match="transposed"):
                torch.ops.spikegpt_cpu.int8_sparse_linear(torch.ones(1, 4), codes_t, scales, True, max_density, wrong)


def test_the_compiled_kernels_refuse_a_row_whose_counts_add_up_past_exact_sums(compiled):
    """The row's magnitude is summed exactly: in float32, 516 counts of 32767 and then 200,000 ones add up to
    16,907,776 (below the limit of 16,909,319) where the true sum is 17,107,772."""
    x = torch.cat([torch.full((516,), 32767.0), torch.ones(200_000)])[None]
    codes = torch.zeros(1, x.shape[1], dtype=torch.int8)
    with pytest.raises(RuntimeError, match="add up to more than"):
        torch.ops.spikegpt_cpu.int8_linear(x, codes, torch.ones(1), True)


def test_spikegpt_kernels_torch_runs_the_reference(monkeypatch, seed):
    monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
    reload_kernel_backend()
    called = []
    for name in ("int8_linear", "int8_sparse_linear"):
        recorder = types.SimpleNamespace(default=lambda *a: called.append(a))
        monkeypatch.setattr(torch.ops.spikegpt_cpu, name, recorder, raising=False)
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(5, 7, g)
    x = torch.randn(2, 7, generator=g)
    assert torch.equal(int8_linear(x, codes, scales), int8_linear_torch(x, codes, scales))
    assert torch.equal(int8_sparse_linear(x, codes.t().contiguous(), scales), int8_linear_torch(x, codes, scales))
    assert not called


def test_without_a_compiler_the_reference_runs_after_one_warning(tmp_path):
    """A real failed build: a fresh extensions directory and a C++ compiler that does not exist."""
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from spikegpt.kernels import int8_linear, int8_sparse_linear, int8_cpu\n"
        "from spikegpt.kernels.int8_torch import int8_linear_torch\n"
        "codes = torch.randint(-127, 128, (4, 6), dtype=torch.int8); scales = torch.rand(4); x = torch.randn(3, 6)\n"
        "assert torch.equal(int8_linear(x, codes, scales), int8_linear_torch(x, codes, scales))\n"
        "c = torch.randint(0, 3, (3, 6)).float()\n"
        "y = int8_sparse_linear(c, codes.t().contiguous(), scales, True, 0.5, codes)\n"
        "assert torch.equal(y, int8_linear_torch(c, codes, scales, True))\n"
        "print('available', int8_cpu.available())\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "available False"
    warnings = [line for line in done.stderr.splitlines() if "could not be built" in line]
    assert len(warnings) == 1, done.stderr[-3000:]
