"""The 8-bit CPU products: the PyTorch reference against a hand computation, and the compiled kernels
(``kernels/csrc/int8_cpu.cpp``) against the reference, to the bit, over densities, odd shapes, batch sizes and
thread counts; the fallback where the kernels cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from spikegpt.kernels import KernelArgumentError, int8_counts_linear, int8_cpu, int8_linear, reload_kernel_backend
from spikegpt.kernels.int8_torch import int8_counts_linear_torch, int8_linear_torch, quantize_rows

SHAPES = [(1, 1), (7, 5), (33, 63), (257, 300), (768, 129)]  # (in, out)
DENSITIES = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]


def weight(out: int, inp: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=generator)
    return codes, torch.rand(out, generator=generator) / 100 + 1e-4


def counts(rows: int, inp: int, density: float, generator: torch.Generator, k: int = 4) -> torch.Tensor:
    values = torch.randint(1, k + 1, (rows, inp), generator=generator) * (torch.randint(0, 2, (rows, inp)) * 2 - 1)
    active = torch.rand(rows, inp, generator=generator) < density
    return (values * active).float()


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
    assert int8_counts_linear_torch(c, codes.t().contiguous(), scales).tolist() == [[(2 - 3) * 0.5, -381 * 0.25]]


@pytest.mark.parametrize(("inp", "out"), SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_real_valued_products_equal_the_reference_to_the_bit(compiled, threads, seed, inp, out, rows):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(out, inp, g)
    x = torch.randn(rows, inp, generator=g) * torch.rand(rows, 1, generator=g) * 10
    x[0] = 0.0 if rows > 2 else x[0]  # an all-zero row: scale 0
    y = int8_linear(x, codes, scales)
    assert torch.isfinite(y).all() and torch.equal(y, int8_linear_torch(x, codes, scales))


@pytest.mark.parametrize(("inp", "out"), SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("rows", [1, 16])
def test_count_products_equal_the_reference_to_the_bit(compiled, threads, seed, inp, out, density, rows):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(out, inp, g)
    c = counts(rows, inp, density, g)
    y = int8_counts_linear(c, codes.t().contiguous(), scales)
    assert torch.isfinite(y).all() and torch.equal(y, int8_counts_linear_torch(c, codes.t().contiguous(), scales))
    if density == 0.0:
        assert not y.any()  # an empty active set reads no row and gives exact zeros


def test_a_rows_bits_do_not_depend_on_the_batch(compiled, seed):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(300, 257, g)
    batch = counts(16, 257, 0.2, g)
    alone = int8_counts_linear(batch[5:6], codes.t().contiguous(), scales)
    assert torch.equal(int8_counts_linear(batch, codes.t().contiguous(), scales)[5:6], alone)
    x = torch.randn(16, 257, generator=g)
    assert torch.equal(int8_linear(x, codes, scales)[7:8], int8_linear(x[7:8], codes, scales))


def test_counts_that_are_not_whole_numbers_are_refused(seed):
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(5, 7, g)
    with pytest.raises(KernelArgumentError, match="whole-number"):
        int8_counts_linear(torch.full((1, 7), 0.5), codes.t().contiguous(), scales)


def test_wrong_weights_are_refused():
    with pytest.raises(KernelArgumentError, match="int8 codes"):
        int8_linear(torch.zeros(1, 3), torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(KernelArgumentError, match="scales"):
        int8_linear(torch.zeros(1, 3), torch.zeros(2, 3, dtype=torch.int8), torch.ones(3))


def test_spikegpt_kernels_torch_runs_the_reference(monkeypatch, seed):
    monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
    reload_kernel_backend()
    called = []
    monkeypatch.setattr(torch.ops.spikegpt_cpu, "int8_linear", lambda *a: called.append(a), raising=False)
    g = torch.Generator().manual_seed(seed)
    codes, scales = weight(5, 7, g)
    x = torch.randn(2, 7, generator=g)
    assert torch.equal(int8_linear(x, codes, scales), int8_linear_torch(x, codes, scales)) and not called


def test_without_a_compiler_the_reference_runs_after_one_warning(tmp_path):
    """A real failed build: a fresh extensions directory and a C++ compiler that does not exist."""
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from spikegpt.kernels import int8_linear, int8_cpu\n"
        "from spikegpt.kernels.int8_torch import int8_linear_torch\n"
        "codes = torch.randint(-127, 128, (4, 6), dtype=torch.int8); scales = torch.rand(4); x = torch.randn(3, 6)\n"
        "assert torch.equal(int8_linear(x, codes, scales), int8_linear_torch(x, codes, scales))\n"
        "int8_linear(x, codes, scales)\n"
        "print('available', int8_cpu.available())\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "available False"
    warnings = [line for line in done.stderr.splitlines() if "could not be built" in line]
    assert len(warnings) == 1, done.stderr[-3000:]
