"""SpikeGPT's two characteristic operations as pure functions on tensors.

``wkv`` (RWKV-4's linear-time attention recurrence) and ``lif`` (the multi-step leaky integrate-and-fire neuron)
each have a PyTorch reference (``*_torch.py``, the definition) and a Triton kernel (``*_triton.py``). These
dispatch functions pick Triton for CUDA tensors and the reference otherwise; the environment variable
``SPIKEGPT_KERNELS=torch|triton|auto`` forces a choice.
"""

from __future__ import annotations

import functools
import os

import torch

from .errors import KernelArgumentError, KernelError, KernelUnavailableError
from .lif_torch import DEFAULT_LIF, LIFParams, lif_torch
from .wkv_torch import State, fresh_state, wkv_torch

__all__ = [
    "KernelArgumentError",
    "KernelError",
    "KernelUnavailableError",
    "LIFParams",
    "State",
    "fresh_state",
    "kernel_backend",
    "lif",
    "wkv",
]

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_backend(tensor: torch.Tensor) -> str:
    """Which implementation runs for ``tensor``: ``"triton"`` or ``"torch"``."""
    choice = os.environ.get("SPIKEGPT_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise KernelUnavailableError(f"SPIKEGPT_KERNELS must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if tensor.is_cuda and _triton_importable() else "torch"
    if not _triton_importable():
        raise KernelUnavailableError(
            "SPIKEGPT_KERNELS=triton, but the triton package cannot be imported; install triton or set "
            "SPIKEGPT_KERNELS=torch"
        )
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise KernelUnavailableError(
            f"SPIKEGPT_KERNELS=triton needs CUDA tensors (got {tensor.device}), or TRITON_INTERPRET=1 to run "
            "Triton's interpreter on a CPU"
        )
    return "triton"


def wkv(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """WKV over k, v ``[B, T, C]`` with decay ``w = -exp(time_decay)`` and bonus ``u = time_first`` (both ``[C]``).

    ``state`` is ``(num, den, max)``, three fp32 ``[B, C]`` tensors, or None for a fresh sequence.
    Returns ``(y [B, T, C], new_state)``; differentiable in w, u, k, v and the incoming state.
    """
    if kernel_backend(k) == "triton":
        from .wkv_triton import wkv_triton

        return wkv_triton(w, u, k, v, state)
    return wkv_torch(w, u, k, v, state)


def lif(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    params: LIFParams = DEFAULT_LIF,
    return_counts: bool = False,
):
    """Multi-step LIF over x ``[B, T, C]`` from membrane ``v0`` ``[B, C]`` (None: zero), with the neurons'
    settings ``params``.

    Returns ``(spikes, v_last)``, or ``(spikes, v_last, counts)`` with ``return_counts``, where ``counts``
    ``[B, C]`` (fp32) is the number of spikes per channel, so spike statistics need no second pass.
    """
    if kernel_backend(x) == "triton":
        from .lif_triton import lif_triton

        return lif_triton(x, v0, params, return_counts)
    spikes, v_last = lif_torch(x, v0, params)
    if return_counts:
        return spikes, v_last, spikes.detach().sum(dim=1, dtype=torch.float32)
    return spikes, v_last
