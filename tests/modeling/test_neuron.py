"""The spike function and the LIF neuron against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from spikegpt.kernels import LIFParams, lif
from spikegpt.kernels.surrogate import spike, surrogate_primitive


@pytest.mark.parametrize("surrogate, alpha", [("atan", 2.0), ("atan", 3.5), ("sigmoid", 4.0)])
def test_spike_is_heaviside_forward_and_its_surrogate_backward(surrogate, alpha):
    x = torch.tensor([-2.0, -0.3, -1e-9, 0.0, 1e-9, 0.4, 3.0], dtype=torch.float64, requires_grad=True)
    out = spike(x, surrogate, alpha)
    assert out.tolist() == [0, 0, 0, 1, 1, 1, 1]  # fires at x >= 0, exactly 0 or 1
    (grad,) = torch.autograd.grad(out.sum(), x)
    h = 1e-6
    with torch.no_grad():
        finite_difference = (
            surrogate_primitive(x + h, surrogate, alpha) - surrogate_primitive(x - h, surrogate, alpha)
        ) / (2 * h)
    torch.testing.assert_close(grad, finite_difference, rtol=1e-8, atol=1e-10)


def test_atan_surrogate_value_at_zero_is_alpha_over_two():
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(spike(x, "atan", 2.0).sum(), x)
    assert grad.item() == pytest.approx(1.0)  # alpha / (2 (1 + 0)) with alpha = 2


# tau = 2, threshold = 1: h_t = v + (x - v) / 2
INPUTS = [0.6, 0.6, 0.6, 2.0, -1.0]
HARD = dict(spikes=[0, 0, 0, 1, 0], membranes=[0.3, 0.45, 0.525, 0.0, -0.5])  # reset to 0 after the spike
SOFT = dict(spikes=[0, 0, 0, 1, 0], membranes=[0.3, 0.45, 0.525, 0.2625, -0.36875])  # 1.2625 - 1


@pytest.mark.parametrize("reset, expected", [("hard", HARD), ("soft", SOFT)])
def test_lif_follows_a_hand_computed_sequence(reset, expected):
    x = torch.tensor(INPUTS, dtype=torch.float64).reshape(1, -1, 1)
    membranes, v = [], None
    for t in range(len(INPUTS)):
        _, v = lif(x[:, t : t + 1], v, LIFParams(tau=2.0, threshold=1.0, reset=reset))
        membranes.append(v.item())
    assert membranes == pytest.approx(expected["membranes"], abs=1e-15)
    all_spikes, v_last = lif(x, None, LIFParams(tau=2.0, threshold=1.0, reset=reset))
    assert all_spikes.flatten().tolist() == expected["spikes"]
    assert v_last.item() == pytest.approx(expected["membranes"][-1], abs=1e-15)
