"""First-order linear recurrences over the leading (token) axis, for the torch references' hand-written backwards."""

from __future__ import annotations

import torch


def linear_scan(decay: torch.Tensor, inject: torch.Tensor, first: torch.Tensor, reverse: bool = False):
    """``s[t+1] = decay[t] * s[t] + inject[t]`` from ``s[0] = first``; all T + 1 values, [T + 1, ...].

    With ``reverse``, ``s[t] = decay[t] * s[t+1] + inject[t]`` from ``s[T] = first``. ``decay`` broadcasts
    against ``inject``; each step is two operations on one token's slice.
    """
    out = torch.empty((inject.shape[0] + 1, *inject.shape[1:]), dtype=inject.dtype, device=inject.device)
    out[-1 if reverse else 0] = first
    states, decays, injects = out.unbind(0), decay.unbind(0), inject.unbind(0)
    for t in range(inject.shape[0] - 1, -1, -1) if reverse else range(inject.shape[0]):
        src, dst = (t + 1, t) if reverse else (t, t + 1)
        torch.add(decays[t] * states[src], injects[t], out=states[dst])
    return out
