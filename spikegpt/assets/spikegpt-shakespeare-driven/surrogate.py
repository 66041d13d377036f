"""Surrogate gradients of the Heaviside spike function.

The forward of a spike is always ``x >= 0``; a surrogate only replaces its derivative (zero almost everywhere)
by the derivative of a smooth primitive, so gradients can flow through spikes.
"""

from __future__ import annotations

import math

import torch

from .errors import KernelArgumentError

SURROGATES = ("atan", "sigmoid")


def check_surrogate(surrogate: str) -> None:
    if surrogate not in SURROGATES:
        raise KernelArgumentError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")


def surrogate_primitive(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """The smooth function whose derivative stands in for the Heaviside step's (used by tests)."""
    if surrogate == "atan":
        return torch.atan(math.pi / 2 * alpha * x) / math.pi + 0.5
    check_surrogate(surrogate)
    return torch.sigmoid(alpha * x)


def surrogate_grad(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """Derivative of the surrogate primitive at ``x`` (``x`` = membrane minus threshold).

    ``atan``: alpha / (2 (1 + (pi/2 alpha x)^2)), as SpikingJelly's ``ATan`` (the original SpikeGPT's choice).
    ``sigmoid``: alpha s (1 - s) with s = sigmoid(alpha x), as SpikingJelly's ``Sigmoid``.
    """
    if surrogate == "atan":
        return alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)
    check_surrogate(surrogate)
    s = torch.sigmoid(alpha * x)
    return alpha * s * (1 - s)


class HeavisideSpike(torch.autograd.Function):
    """Spike ``x >= 0`` with a surrogate gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * surrogate_grad(x, ctx.surrogate, ctx.alpha), None, None


class SpikeCount(torch.autograd.Function):
    """Integer spike counts ``clamp(round(u), low, high)`` with the straight-through gradient of their primitive
    ``clamp(u, low, high)``: 1 inside [low, high], 0 outside."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, low: int, high: int) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.bounds = (low, high)
        return torch.round(u).clamp_(low, high)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (u,) = ctx.saved_tensors
        low, high = ctx.bounds
        return grad_out * ((u >= low) & (u <= high)).to(grad_out.dtype), None, None


def _needs_gradient(x: torch.Tensor) -> bool:
    """Whether a spike function must record its surrogate gradient. Without one it runs its forward's operations
    directly: a traced decoding step then records them as plain operators, where an autograd Function would be a
    call back into Python at every step."""
    return torch.is_grad_enabled() and x.requires_grad


def spike_count(u: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Spike counts ``round(u)`` clipped to ``low..high`` (whole numbers in ``u``'s dtype), differentiable
    straight through; ``count_primitive`` is the function whose derivative the backward uses."""
    if not _needs_gradient(u):
        return torch.round(u).clamp_(int(low), int(high))
    return SpikeCount.apply(u, int(low), int(high))


def count_primitive(u: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The primitive of the spike count's surrogate gradient (used by tests)."""
    return u.clamp(low, high)


def spike(x: torch.Tensor, surrogate: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    """Binary spikes ``x >= 0`` (exactly 0 or 1), differentiable through ``surrogate``."""
    check_surrogate(surrogate)
    if not _needs_gradient(x):
        return (x >= 0).to(x.dtype)
    return HeavisideSpike.apply(x, surrogate, alpha)
