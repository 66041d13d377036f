"""Multi-step leaky integrate-and-fire neuron: the PyTorch reference that defines the operation.

Per element, along the token axis t (membrane ``v`` starts at ``v0``, or 0):

    h_t = v_{t-1} + (x_t - v_{t-1}) / tau          (charge, with the input decayed as SpikingJelly's default)
    s_t = [h_t >= threshold]                        (spike, exactly 0 or 1)
    v_t = h_t * (1 - s_t)          (hard reset to 0)     or     v_t = h_t - s_t * threshold   (soft reset)

The backward replaces d s / d h by a surrogate gradient and, like the original SpikeGPT (SpikingJelly's
``detach_reset=False``), also differentiates through the reset.

The neuron's settings (tau, threshold, reset, surrogate, alpha) travel together as one ``LIFParams``.

A padding ``mask`` ``[B, T]`` (bool, True = a real token; None = all real) skips positions: at a padded position
the neuron neither charges nor fires (spike 0, membrane unchanged), so a padded row computes what its real tokens
alone would.

``lif_sequential`` is the plain autograd definition; ``lif_torch`` computes the same function (the same float
operations, so bit-identical spikes) with a hand-written backward, which is what the model uses on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import KernelArgumentError
from .scan import linear_scan
from .surrogate import check_surrogate, spike, surrogate_grad
from .wkv_torch import check_mask

RESETS = ("hard", "soft")


@dataclass(frozen=True)
class LIFParams:
    """The settings of a layer of LIF neurons: membrane time constant ``tau`` (> 1), firing ``threshold``, ``reset``
    ("hard": to 0, "soft": subtract the threshold), and the ``surrogate`` gradient with its sharpness ``alpha``.
    Checked on construction (``KernelArgumentError``)."""

    tau: float = 2.0
    threshold: float = 1.0
    reset: str = "hard"
    surrogate: str = "atan"
    alpha: float = 2.0

    def __post_init__(self) -> None:
        for name in ("tau", "threshold", "alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.tau <= 1.0:
            raise KernelArgumentError(f"lif needs tau > 1 (the membrane keeps 1 - 1/tau of itself), got {self.tau}")
        if self.reset not in RESETS:
            raise KernelArgumentError(f"unknown reset {self.reset!r}; choose one of {', '.join(RESETS)}")
        check_surrogate(self.surrogate)

    @property
    def inv_tau(self) -> float:
        return 1.0 / self.tau


DEFAULT_LIF = LIFParams()


def check_lif_args(
    x: torch.Tensor, v0: torch.Tensor | None, params: LIFParams, mask: torch.Tensor | None = None
) -> None:
    if not isinstance(params, LIFParams):
        raise KernelArgumentError(f"lif takes its settings as one LIFParams, got {type(params).__name__}")
    if x.dim() != 3:
        raise KernelArgumentError(f"lif expects x of shape [B, T, C], got {tuple(x.shape)}")
    if v0 is not None and v0.shape != (x.shape[0], x.shape[2]):
        raise KernelArgumentError(f"lif expects v0 of shape [B, C] = {(x.shape[0], x.shape[2])}, got {tuple(v0.shape)}")
    check_mask(mask, x, "lif")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _initial_membrane(x: torch.Tensor, v0: torch.Tensor | None) -> torch.Tensor:
    if v0 is None:
        return x.new_zeros(x.shape[0], x.shape[2], dtype=_compute_dtype(x))
    dtype = _compute_dtype(x)
    return v0 if v0.dtype == dtype else v0.to(dtype)


def lif_step(v, x_t, params: LIFParams):
    """One token: charge membrane ``v`` [B, C] with ``x_t``, spike, reset. Returns (spikes, new membrane)."""
    h = v + (x_t - v) * params.inv_tau
    s = spike(h - params.threshold, params.surrogate, params.alpha)
    return s, (h * (1 - s) if params.reset == "hard" else h - s * params.threshold)


def lif_sequential(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    params: LIFParams = DEFAULT_LIF,
    mask: torch.Tensor | None = None,
    *,
    step=lif_step,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: ``step`` for each token, differentiated by autograd. Returns (spikes [B, T, C],
    v_last [B, C]). The membrane is fp32 (fp64 for fp64 inputs); spikes have the dtype of ``x``.

    ``step`` is ``lif_step`` or a function computing the same (``bench/wkv_lif.py`` passes a compiled one).
    """
    check_lif_args(x, v0, params, mask)
    v = _initial_membrane(x, v0)
    spikes = []
    for t in range(x.shape[1]):
        s, stepped = step(v, x[:, t].to(v.dtype), params)
        if mask is None:
            v = stepped
        else:  # a padded position: no spike, the membrane as it was
            live = mask[:, t, None]
            s, v = s * live, torch.where(live, stepped, v)
        spikes.append(s)
    return torch.stack(spikes, dim=1).to(x.dtype), v


def _fire(v, x_t, params: LIFParams, charged, fired, live=None):
    """One token without autograd: writes the charged membrane and the spikes into ``charged`` and ``fired``
    ([B, C]), returns the new membrane. The same float operations as ``lif_step``, so the same spikes. Where
    ``live`` ([B, 1] bool) is False (padding) nothing fires and the membrane stays ``v``."""
    threshold = params.threshold
    torch.add(v, (x_t - v) * params.inv_tau, out=charged)
    torch.ge(charged, threshold, out=fired)
    if live is not None:
        fired &= live
    if params.reset == "hard":
        after = charged.masked_fill(fired, 0.0)
    else:
        after = torch.where(fired, charged - threshold, charged)
    return after if live is None else torch.where(live, after, v)


class _LIF(torch.autograd.Function):
    """The loop of ``lif_sequential`` token-major (the same float operations, so the same spikes), keeping each
    step's charged membrane for the backward, whose only loop is a linear recurrence of two operations per
    token; everything else is vectorised over the sequence."""

    @staticmethod
    def forward(ctx, x, v0, params, mask):
        v = _initial_membrane(x, v0)
        xt = x.transpose(0, 1).to(v.dtype).contiguous()  # [T, B, C]: contiguous per-token slices
        charged = torch.empty_like(xt)
        fired = torch.empty(xt.shape, dtype=torch.bool, device=x.device)
        live = None if mask is None else mask.t()[:, :, None]  # [T, B, 1]
        lives = (None,) * xt.shape[0] if live is None else live.unbind(0)
        for x_t, h, s, live_t in zip(xt.unbind(0), charged.unbind(0), fired.unbind(0), lives, strict=True):
            v = _fire(v, x_t, params, h, s, live_t)
        ctx.save_for_backward(charged, fired, live)
        ctx.config = (params, x.dtype, v0 is not None)
        return fired.to(x.dtype).transpose(0, 1), v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        # With h_t = v_{t-1} + (x_t - v_{t-1}) / tau and v_t = reset(h_t), the gradient at h_t is
        # g_h_t = g_v_t dv/dh(h_t) + g_s_t surrogate'(h_t), and g_v_{t-1} = keep g_h_t with keep = 1 - 1/tau:
        # a reverse linear recurrence for g_v, with g_x_t = g_h_t / tau = g_v_{t-1} / (tau keep). A padded token
        # (``live`` False) keeps the membrane: g_v passes through it (decay 1, nothing injected) and g_x_t = 0.
        charged, fired, live = ctx.saved_tensors
        params, x_dtype, has_v0 = ctx.config
        inv_tau = params.inv_tau
        keep = 1 - inv_tau
        sg = surrogate_grad(charged - params.threshold, params.surrogate, params.alpha)
        if params.reset == "hard":
            dv_dh = (~fired).to(charged.dtype) - charged * sg
        else:
            dv_dh = 1 - params.threshold * sg
        from_spikes = grad_spikes.transpose(0, 1).to(charged.dtype) * sg
        decay, inject = dv_dh * keep, from_spikes * keep
        if live is not None:
            decay, inject = torch.where(live, decay, 1), torch.where(live, inject, 0)
        grad_v = linear_scan(decay, inject, grad_v_last.to(charged.dtype), reverse=True)
        grad_x = grad_v[:-1] * (inv_tau / keep)
        if live is not None:
            grad_x = torch.where(live, grad_x, 0)
        return grad_x.transpose(0, 1).to(x_dtype), (grad_v[0] if has_v0 else None), None, None


def lif_torch(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    params: LIFParams = DEFAULT_LIF,
    return_counts: bool = False,
    mask: torch.Tensor | None = None,
):
    """Same function as ``lif_sequential``, with a hand-written backward. Returns (spikes, v_last), or with
    ``return_counts`` (spikes, v_last, counts) as the dispatch function ``lif`` does: ``counts`` ``[B, C]`` fp32 are
    the spikes per channel. ``mask`` ``[B, T]`` bool (True: a real token): a padded position neither fires nor moves
    the membrane."""
    spikes, v_last = _lif(x, v0, params, mask)
    if return_counts:
        return spikes, v_last, (spikes.detach() if spikes.requires_grad else spikes).sum(dim=1, dtype=torch.float32)
    return spikes, v_last


def _lif(
    x: torch.Tensor, v0: torch.Tensor | None, params: LIFParams, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_lif_args(x, v0, params, mask)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (v0 is not None and v0.requires_grad))
    if x.shape[1] == 1 and not needs_grad:  # decoding: one token, nothing to save for a backward
        v = _initial_membrane(x, v0)
        charged = torch.empty_like(v)
        fired = torch.empty(v.shape, dtype=torch.bool, device=v.device)
        xt = x[:, 0] if x.dtype == v.dtype else x[:, 0].to(v.dtype)  # (no conversion recorded in a traced fp32 step)
        v = _fire(v, xt, params, charged, fired, None if mask is None else mask[:, :1])
        return fired.to(x.dtype)[:, None], v
    return _LIF.apply(x, v0, params, mask)
