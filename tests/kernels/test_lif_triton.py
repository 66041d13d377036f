"""The Triton LIF kernel, run by Triton's interpreter on CPU tensors: spikes, last membrane and spike counts
bit-identical to the torch reference; gradients of x and v0 against the float64 definition.

Every buffer the kernel writes starts as NaN (``triton_interpreter.interpreted_triton``). Gradient tolerances
(normwise relative error): fp32 1e-5, fp64 1e-10; half types: x's gradient is stored in the half type, within
about one rounding of it (bf16 1e-2, fp16 2e-3).
"""

from __future__ import annotations

import pytest
import torch
from kernel_numerics import grads, lif_direct, lif_on_real_tokens, padding_mask, rel_err
from triton_interpreter import interpreted_triton  # noqa: F401  (autouse: interpreter, NaN-filled outputs)

from spikegpt.kernels.lif_torch import LIFParams, lif_torch
from spikegpt.kernels.lif_triton import lif_triton

OPTIONS = {
    "hard-atan": dict(reset="hard", surrogate="atan"),
    "soft-sigmoid": dict(reset="soft", surrogate="sigmoid", alpha=4.0),
    "hard-sigmoid-tau3": dict(reset="hard", surrogate="sigmoid", tau=3.0, threshold=0.5),
    "soft-atan-tau1.5": dict(reset="soft", surrogate="atan", tau=1.5, threshold=0.8),
}


LAUNCH = ("chunk", "block_c")


def flat(fn, **options):
    """``fn(x, v0, LIFParams(...))`` as a list; options other than the LIF settings are the kernel's launch."""
    launch = {k: options.pop(k) for k in LAUNCH if k in options}

    def run(x, v0=None):
        return list(fn(x, v0, LIFParams(**options), **launch))

    return run


def random_input(shape, seed, dtype=torch.float32, grid=False):
    """Continuous values, or values on a 0.5-grid that put many membranes exactly on the threshold."""
    g = torch.Generator().manual_seed(seed)
    if grid:
        return (torch.randint(-2, 7, shape, generator=g) * 0.5).to(dtype)
    return (torch.randn(shape, generator=g) * 1.5 + 0.5).to(dtype)


def assert_same_forward(x, v0, **options):
    spikes, v_last, counts = lif_triton(x, v0, LIFParams(**options), return_counts=True)
    want_spikes, want_v = lif_torch(x, v0, LIFParams(**options))
    assert spikes.dtype == x.dtype and counts.dtype == torch.float32
    assert torch.equal(spikes, want_spikes)
    assert torch.equal(v_last, want_v)
    assert torch.equal(counts, want_spikes.sum(dim=1, dtype=torch.float32))
    assert 0 < spikes.float().mean() < 1


@pytest.mark.parametrize("with_v0", [False, True], ids=["v0-zero", "v0-given"])
@pytest.mark.parametrize("options", OPTIONS)
def test_fp32_spikes_bit_identical_and_gradients_match_the_definition(options, with_v0, seed):
    opts = OPTIONS[options]
    x = random_input((3, 17, 33), seed)
    v0 = torch.randn(3, 33, generator=torch.Generator().manual_seed(seed + 1)) if with_v0 else None
    assert_same_forward(x, v0, **opts)
    _, gradients = grads(flat(lif_triton, **opts), [x, v0], seed)
    _, want = grads(flat(lif_direct, **opts), [x.double(), None if v0 is None else v0.double()], seed)
    for got, expected in zip(gradients, want, strict=True):
        assert got.dtype == torch.float32
        assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("tau", [2.0, 3.0])
def test_spikes_bit_identical_on_threshold_ties(tau, seed):
    for reset in ("hard", "soft"):
        assert_same_forward(random_input((2, 40, 33), seed, grid=True), None, tau=tau, reset=reset)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs(dtype, seed):
    x = random_input((2, 17, 20), seed, dtype=dtype)
    v0 = torch.randn(2, 20, generator=torch.Generator().manual_seed(seed + 1))
    assert_same_forward(x, v0, reset="soft")
    (_, v_last), gradients = grads(flat(lif_triton, reset="soft"), [x, v0], seed)
    _, want = grads(flat(lif_direct, reset="soft"), [x.double(), v0.double()], seed)
    assert v_last.dtype == torch.float32 and gradients[0].dtype == dtype and gradients[1].dtype == torch.float32
    assert rel_err(gradients[0], want[0]) <= (1e-2 if dtype == torch.bfloat16 else 2e-3)
    assert rel_err(gradients[1], want[1]) <= 1e-5


def test_fp64_gradients_match_the_definition_to_rounding(seed):
    x = random_input((2, 17, 20), seed, dtype=torch.float64)
    v0 = torch.randn(2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    assert_same_forward(x, v0, tau=3.0)
    (_, v_last), gradients = grads(flat(lif_triton, tau=3.0), [x, v0], seed)
    _, want = grads(flat(lif_direct, tau=3.0), [x, v0], seed)
    assert v_last.dtype == torch.float64
    for got, expected in zip(gradients, want, strict=True):
        assert rel_err(got, expected) <= 1e-10


@pytest.mark.parametrize(
    "shape, launch",
    [((2, 1, 5), {}), ((1, 32, 16), {}), ((3, 17, 33), dict(chunk=4, block_c=16))],
    ids=["one-token", "two-full-chunks", "small-tiles"],
)
def test_shapes_and_tilings_match_the_torch_reference(shape, launch, seed):
    x = random_input(shape, seed)
    v0 = torch.randn(shape[0], shape[2], generator=torch.Generator().manual_seed(seed + 1))
    (spikes, v_last), gradients = grads(flat(lif_triton, **launch), [x, v0], seed)
    (want_spikes, want_v), want = grads(flat(lif_torch), [x, v0], seed)
    assert torch.equal(spikes, want_spikes) and torch.equal(v_last, want_v)
    for got, expected in zip(gradients, want, strict=True):
        assert rel_err(got, expected) <= 1e-5


def test_membrane_carries_across_calls_forward_and_backward(seed):
    x = random_input((2, 19, 20), seed)
    v0 = torch.randn(2, 20, generator=torch.Generator().manual_seed(seed + 1))

    def in_two(x, v0):
        s1, mid = lif_triton(x[:, :7], v0)
        s2, end = lif_triton(x[:, 7:], mid)
        return [torch.cat([s1, s2], dim=1), end]

    outputs, gradients = grads(in_two, [x, v0], seed)
    want_outputs, want = grads(flat(lif_triton), [x, v0], seed)
    assert all(torch.equal(a, b) for a, b in zip(outputs, want_outputs, strict=True))
    for got, expected in zip(gradients, want, strict=True):
        assert rel_err(got, expected) <= 1e-5


def test_without_gradients_the_forward_is_the_same(seed):
    x = random_input((2, 17, 20), seed)
    with torch.no_grad():
        spikes, v_last = lif_triton(x)
    spikes_grad, v_grad = lif_triton(x.requires_grad_())
    assert torch.equal(spikes, spikes_grad.detach()) and torch.equal(v_last, v_grad.detach())


@pytest.mark.parametrize("options", ["hard-atan", "soft-sigmoid"])
def test_padded_rows_are_their_real_tokens_alone(options, seed):
    """A padding mask (left, right, all-padding and scattered rows) over several chunks and channel blocks: spikes,
    membrane and counts bit-identical to the torch reference (no spike at a padded position), gradients of x and v0
    as the definition's on each row's real tokens alone, 0 at padded positions."""
    opts = OPTIONS[options]
    x = random_input((5, 19, 20), seed, grid=True)
    v0 = torch.randn(5, 20, generator=torch.Generator().manual_seed(seed + 1))
    mask = padding_mask(5, 19, seed)
    params = LIFParams(**opts)
    spikes, v_last, counts = lif_triton(x, v0, params, True, mask, chunk=4, block_c=16)
    want_spikes, want_v = lif_torch(x, v0, params, mask=mask)
    assert torch.equal(spikes, want_spikes) and torch.equal(v_last, want_v) and not spikes[~mask].any()
    assert torch.equal(counts, want_spikes.sum(dim=1, dtype=torch.float32))

    def masked(fn, **launch):
        return lambda x, v0: list(fn(x, v0, params, mask=mask, **launch))[:2]

    _, gradients = grads(masked(lif_triton, chunk=4, block_c=16), [x, v0], seed)
    _, want = grads(lambda x, v0: list(lif_on_real_tokens(mask)(x, v0, params)), [x.double(), v0.double()], seed)
    for got, expected in zip(gradients, want, strict=True):
        assert rel_err(got, expected) <= 1e-5
    assert not gradients[0][~mask].any()
