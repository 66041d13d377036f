"""The Triton WKV kernel, run by Triton's interpreter on CPU tensors, against the float64 definition: the output,
the new state and the gradient of every input, the incoming state included.

Every buffer the kernel writes starts as NaN (``triton_interpreter.interpreted_triton``). Tolerances
(normwise relative error): fp32 1e-5, fp64 1e-10; half types: values stored in the half type within about one
rounding of it (bf16 1e-2, fp16 2e-3), fp32 values 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from kernel_numerics import grads, padding_mask, rel_err, wkv_direct, wkv_inputs, wkv_on_real_tokens
from triton_interpreter import interpreted_triton  # noqa: F401  (autouse: interpreter, NaN-filled outputs)

from spikegpt.kernels.wkv_torch import wkv_torch
from spikegpt.kernels.wkv_triton import wkv_triton

NAMES = ["y", "num", "den", "max", "dw", "du", "dk", "dv", "dnum", "dden", "dmax"]


def flat(fn, **options):
    def run(w, u, k, v, *state):
        y, new_state = fn(w, u, k, v, tuple(state) if state else None, **options)
        return [y, *new_state]

    return run


def check_against_definition(inputs, seed, tolerance, **options):
    outputs, gradients = grads(flat(wkv_triton, **options), inputs, seed)
    want_outputs, want_gradients = grads(flat(wkv_direct), [x.double() for x in inputs], seed)
    for name, got, want in zip(NAMES, outputs + gradients, want_outputs + want_gradients, strict=False):
        limit = tolerance.get(name, tolerance["fp32"]) if isinstance(tolerance, dict) else tolerance
        assert rel_err(got, want) <= limit, f"{name}: {rel_err(got, want):.2e}"
    return outputs, gradients


# (B, T, C), carried state, decay spread, |k| spread, launch options
CASES = {
    "odd-shape": ((3, 17, 33), False, 1.0, 1.0, {}),
    "odd-shape-state": ((3, 17, 33), True, 1.0, 1.0, {}),
    "small-tiles": ((3, 17, 33), True, 1.0, 1.0, dict(chunk=4, block_c=16)),  # 5 chunks, 3 channel blocks
    "one-token": ((2, 1, 5), True, 1.0, 1.0, {}),
    "two-full-chunks": ((1, 32, 16), True, 1.0, 1.0, {}),
    "extreme": ((2, 12, 16), True, 3.0, 20.0, {}),  # w from about -1e-4 to -1e4, |k| up to about 60
}


@pytest.mark.parametrize("case", CASES)
def test_fp32_forward_and_every_gradient_match_the_definition(case, seed):
    shape, with_state, decay_scale, k_scale, options = CASES[case]
    w, u, k, v, state = wkv_inputs(*shape, seed=seed, decay_scale=decay_scale, k_scale=k_scale, with_state=with_state)
    # the extreme case's exponentials (|w| to 1e4, |k| to 60) round more in fp32: 1e-5 failed ~3% of fresh seeds
    # (worst seen 1.24e-5), 4e-5 held over 200
    tolerance = 4e-5 if case == "extreme" else 1e-5
    outputs, _ = check_against_definition([w, u, k, v, *(state or ())], seed, tolerance, **options)
    assert outputs[0].dtype == torch.float32 and all(s.dtype == torch.float32 for s in outputs[1:])


def test_fp64_matches_the_definition_to_rounding(seed):
    w, u, k, v, state = wkv_inputs(3, 17, 33, seed=seed, with_state=True)
    inputs = [x.double() for x in (w, u, k, v, *state)]
    outputs, _ = check_against_definition(inputs, seed, 1e-10)
    assert all(o.dtype == torch.float64 for o in outputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs_accumulate_in_fp32(dtype, seed):
    """k, v, y and their gradients are stored in the half type; state, w, u and their gradients are fp32."""
    w, u, k, v, state = wkv_inputs(2, 17, 20, seed=seed, with_state=True, dtype=dtype)
    half = 1e-2 if dtype == torch.bfloat16 else 2e-3
    outputs, gradients = check_against_definition(
        [w, u, k, v, *state], seed, {"fp32": 1e-5, "y": half, "dk": half, "dv": half}
    )
    assert outputs[0].dtype == dtype and gradients[2].dtype == dtype and gradients[3].dtype == dtype
    assert all(s.dtype == torch.float32 for s in outputs[1:])


def test_matches_the_torch_reference(seed):
    w, u, k, v, state = wkv_inputs(2, 20, 24, seed=seed, with_state=True)
    outputs, gradients = grads(flat(wkv_triton), [w, u, k, v, *state], seed)
    want_outputs, want_gradients = grads(flat(wkv_torch), [w, u, k, v, *state], seed)
    for name, got, want in zip(NAMES, outputs + gradients, want_outputs + want_gradients, strict=True):
        assert rel_err(got, want) <= 1e-5, name


def test_state_carries_across_calls_forward_and_backward(seed):
    """Truncated BPTT: a sequence split in two calls, the state passed between them, gives the outputs and
    gradients of one call, the gradient reaching the first piece through the carried state."""
    w, u, k, v, state = wkv_inputs(2, 19, 20, seed=seed, with_state=True)

    def in_two(w, u, k, v, *state):
        y1, mid = wkv_triton(w, u, k[:, :11], v[:, :11], tuple(state))
        y2, end = wkv_triton(w, u, k[:, 11:], v[:, 11:], mid)
        return [torch.cat([y1, y2], dim=1), *end]

    outputs, gradients = grads(in_two, [w, u, k, v, *state], seed)
    want_outputs, want_gradients = grads(flat(wkv_triton), [w, u, k, v, *state], seed)
    for name, got, want in zip(NAMES, outputs + gradients, want_outputs + want_gradients, strict=True):
        assert rel_err(got, want) <= 1e-5, name


def test_without_gradients_the_forward_is_the_same(seed):
    w, u, k, v, state = wkv_inputs(2, 17, 33, seed=seed, with_state=True)
    with torch.no_grad():
        y, new_state = wkv_triton(w, u, k, v, state)
    y_grad, state_grad = wkv_triton(w, u, k.requires_grad_(), v, state)
    assert torch.equal(y, y_grad.detach())
    assert all(torch.equal(a, b.detach()) for a, b in zip(new_state, state_grad, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "with-state"])
def test_padded_rows_are_their_real_tokens_alone(with_state, dtype, seed):
    """A padding mask (left, right, all-padding and scattered rows) over several chunks and channel blocks: the
    output, the new state and every gradient are the definition's on each row's real tokens alone, with 0 (not the
    NaN the buffers start with) at padded positions, and agree with the torch reference."""
    w, u, k, v, state = wkv_inputs(5, 19, 20, seed=seed, with_state=with_state)
    mask = padding_mask(5, 19, seed)
    inputs = [x.to(dtype) for x in (w, u, k, v, *(state or ()))]

    def masked(fn, **options):
        return flat(lambda w, u, k, v, state, **o: fn(w, u, k, v, state, mask, **o), **options)

    outputs, gradients = grads(masked(wkv_triton, chunk=4, block_c=16), inputs, seed)
    want_outputs, want_gradients = grads(flat(wkv_on_real_tokens(mask)), [x.double() for x in inputs], seed)
    torch_outputs, torch_gradients = grads(masked(wkv_torch), inputs, seed)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    for name, got, want, reference in zip(
        NAMES, outputs + gradients, want_outputs + want_gradients, torch_outputs + torch_gradients, strict=False
    ):
        assert rel_err(got, want) <= tolerance, f"{name}: {rel_err(got, want):.2e}"
        assert rel_err(got, reference) <= tolerance, f"{name} against the reference: {rel_err(got, reference):.2e}"
    assert not outputs[0][~mask].any() and not gradients[2][~mask].any() and not gradients[3][~mask].any()
