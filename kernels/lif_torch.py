"""Multi-step leaky integrate-and-fire neuron: the PyTorch reference that defines the operation.

Per element, along the token axis t (membrane ``v`` starts at ``v0``, or 0):

    h_t = v_{t-1} + (x_t - v_{t-1}) / tau          (charge, with the input decayed as SpikingJelly's default)
    s_t = [h_t >= threshold]                        (spike, exactly 0 or 1)
    v_t = h_t * (1 - s_t)          (hard reset to 0)     or     v_t = h_t - s_t * threshold   (soft reset)

The backward replaces d s / d h by a surrogate gradient and, like the original SpikeGPT (SpikingJelly's
``detach_reset=False``), also differentiates through the reset.

``lif_sequential`` is the plain autograd definition; ``lif_torch`` computes the same function with a hand-written
backward over the same loop (one pass, no autograd graph per step), which is what the model uses on a CPU.
"""

from __future__ import annotations

import torch

from .surrogate import SURROGATES, spike, surrogate_grad

RESETS = ("hard", "soft")


def check_lif_args(x: torch.Tensor, v0: torch.Tensor | None, tau: float, reset: str, surrogate: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"lif expects x of shape [B, T, C], got {tuple(x.shape)}")
    if v0 is not None and v0.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"lif expects v0 of shape [B, C] = {(x.shape[0], x.shape[2])}, got {tuple(v0.shape)}")
    if tau <= 1.0:
        raise ValueError(f"lif needs tau > 1 (the membrane keeps 1 - 1/tau of itself), got {tau}")
    if reset not in RESETS:
        raise ValueError(f"unknown reset {reset!r}; choose one of {', '.join(RESETS)}")
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _initial_membrane(x: torch.Tensor, v0: torch.Tensor | None) -> torch.Tensor:
    if v0 is None:
        return x.new_zeros(x.shape[0], x.shape[2], dtype=_compute_dtype(x))
    return v0.to(_compute_dtype(x))


def lif_sequential(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    tau: float = 2.0,
    threshold: float = 1.0,
    reset: str = "hard",
    surrogate: str = "atan",
    alpha: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: a loop over t, differentiated by autograd. Returns (spikes [B, T, C], v_last [B, C]).

    The membrane is fp32 (fp64 for fp64 inputs); spikes have the dtype of ``x``.
    """
    check_lif_args(x, v0, tau, reset, surrogate)
    inv_tau = 1.0 / tau
    v = _initial_membrane(x, v0)
    spikes = []
    for t in range(x.shape[1]):
        h = v + (x[:, t].to(v.dtype) - v) * inv_tau
        s = spike(h - threshold, surrogate, alpha)
        v = h * (1 - s) if reset == "hard" else h - s * threshold
        spikes.append(s)
    return torch.stack(spikes, dim=1).to(x.dtype), v


class _LIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, tau, threshold, reset, surrogate, alpha):
        inv_tau = 1.0 / tau
        v = _initial_membrane(x, v0)
        h_all = torch.empty(x.shape, dtype=v.dtype, device=x.device)
        xf = x.to(v.dtype)
        for t in range(x.shape[1]):
            h = v + (xf[:, t] - v) * inv_tau
            h_all[:, t] = h
            fired = h >= threshold
            v = torch.where(fired, 0.0, h) if reset == "hard" else torch.where(fired, h - threshold, h)
        spikes = (h_all >= threshold).to(x.dtype)
        ctx.save_for_backward(h_all)
        ctx.config = (inv_tau, threshold, reset, surrogate, alpha, x.dtype, v0 is not None)
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        (h_all,) = ctx.saved_tensors
        inv_tau, threshold, reset, surrogate, alpha, x_dtype, has_v0 = ctx.config
        grad_x = torch.empty_like(h_all)
        gv = torch.zeros_like(h_all[:, 0]) if grad_v_last is None else grad_v_last.to(h_all.dtype)
        gs_all = None if grad_spikes is None else grad_spikes.to(h_all.dtype)
        for t in range(h_all.shape[1] - 1, -1, -1):
            h = h_all[:, t]
            sg = surrogate_grad(h - threshold, surrogate, alpha)
            if reset == "hard":
                dv_dh = (h < threshold).to(h.dtype) - h * sg
            else:
                dv_dh = 1 - threshold * sg
            gh = gv * dv_dh
            if gs_all is not None:
                gh = gh + gs_all[:, t] * sg
            grad_x[:, t] = gh * inv_tau
            gv = gh * (1 - inv_tau)
        return grad_x.to(x_dtype), (gv if has_v0 else None), None, None, None, None, None


def lif_torch(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    tau: float = 2.0,
    threshold: float = 1.0,
    reset: str = "hard",
    surrogate: str = "atan",
    alpha: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same function as ``lif_sequential``, with a hand-written backward. Returns (spikes, v_last)."""
    check_lif_args(x, v0, tau, reset, surrogate)
    return _LIF.apply(x, v0, float(tau), float(threshold), reset, surrogate, float(alpha))
