"""RWKV-4 WKV recurrence: the PyTorch reference that defines the operation.

For each batch row b and channel c, with w = -exp(time_decay) < 0 and u = time_first:

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

Sums before the sequence count as the carried state, kept in the numerically stable form of RWKV-4's CUDA
kernel (BlinkDL/RWKV-LM ``wkv_cuda.cu``): ``(num, den, max)`` with the true numerator ``num * e^max`` and the true
denominator ``den * e^max``; a fresh sequence starts at ``(0, 0, -1e38)``. State is always fp32; ``y`` has the
dtype of ``k``; arithmetic is fp32 (fp64 for fp64 inputs).

``wkv_sequential`` (one stable step per token) is the definition. ``wkv_chunked`` computes the same sums in
closed form over chunks of tokens (one max-subtracted exponential per (t, i) pair inside a chunk, the state
carried between chunks), which is what the model uses for more than a token at a time on a CPU.
"""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

FRESH_MAX = -1e38  # the stable form's "no tokens yet" exponent, as in RWKV-4's kernel


def fresh_state(batch: int, channels: int, device: torch.device | str = "cpu") -> State:
    """The state of a sequence that has seen no tokens."""
    zeros = torch.zeros(batch, channels, dtype=torch.float32, device=device)
    return zeros, zeros.clone(), torch.full_like(zeros, FRESH_MAX)


def check_wkv_args(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State | None) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv expects k and v of the same shape [B, T, C], got {tuple(k.shape)} and {tuple(v.shape)}")
    channels = k.shape[2]
    if w.shape != (channels,) or u.shape != (channels,):
        raise ValueError(f"wkv expects w and u of shape [C] = [{channels}], got {tuple(w.shape)} and {tuple(u.shape)}")
    if state is not None and (len(state) != 3 or any(s.shape != (k.shape[0], channels) for s in state)):
        shapes = [tuple(s.shape) for s in state]
        raise ValueError(f"wkv expects a state of three [B, C] = {(k.shape[0], channels)} tensors, got {shapes}")


def _compute_dtype(k: torch.Tensor) -> torch.dtype:
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def _prepare(w, u, k, v, state):
    dtype = _compute_dtype(k)
    if state is None:
        state = fresh_state(k.shape[0], k.shape[2], k.device)
    num, den, mx = (s.to(dtype) for s in state)
    return w.to(dtype), u.to(dtype), k.to(dtype), v.to(dtype), num, den, mx


def _as_state(num: torch.Tensor, den: torch.Tensor, mx: torch.Tensor) -> State:
    if num.dtype == torch.float64:
        return num, den, mx
    return num.float(), den.float(), mx.float()


def wkv_step(w, u, k_t, v_t, num, den, mx):
    """One token (k_t, v_t of shape [B, C]) of the stable recurrence: returns (y_t, num, den, mx)."""
    p = torch.maximum(mx, u + k_t)
    e1 = torch.exp(mx - p)
    e2 = torch.exp(u + k_t - p)
    y = (e1 * num + e2 * v_t) / (e1 * den + e2)
    p = torch.maximum(mx + w, k_t)
    e1 = torch.exp(mx + w - p)
    e2 = torch.exp(k_t - p)
    return y, e1 * num + e2 * v_t, e1 * den + e2, p


def wkv_sequential(w, u, k, v, state: State | None = None) -> tuple[torch.Tensor, State]:
    """The definition: one stable step per token. Returns (y [B, T, C], new state)."""
    check_wkv_args(w, u, k, v, state)
    w, u, kk, vv, num, den, mx = _prepare(w, u, k, v, state)
    ys = []
    for t in range(kk.shape[1]):
        y, num, den, mx = wkv_step(w, u, kk[:, t], vv[:, t], num, den, mx)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else kk.new_zeros(kk.shape)
    return y.to(k.dtype), _as_state(num, den, mx)


def _chunk(w, u, k, v, num, den, mx):
    """Closed form over one chunk k, v [B, n, C] starting from state (num, den, mx)."""
    n = k.shape[1]
    pos = torch.arange(n, device=k.device, dtype=k.dtype)
    lag = pos[:, None] - 1 - pos[None, :]  # [n(t), n(i)]: t - 1 - i
    before = lag >= 0
    # exponent of token i's term in output t: (t-1-i) w + k_i for i < t, u + k_t for i = t
    expo = lag[None, :, :, None] * w + k[:, None, :, :]  # [B, t, i, C]
    diag = torch.eye(n, dtype=torch.bool, device=k.device)
    expo = torch.where(diag[None, :, :, None], (u + k)[:, None, :, :], expo)
    expo = torch.where((before | diag)[None, :, :, None], expo, float("-inf"))
    carried = mx[:, None, :] + pos[None, :, None] * w  # [B, t, C]: state term's exponent at output t
    # y does not depend on the stabilising maximum, so no gradient needs to flow through it
    p = torch.maximum(expo.amax(dim=2), carried).detach()
    e = torch.exp(expo - p[:, :, None, :])
    ec = torch.exp(carried - p)
    y = (ec * num[:, None, :] + (e * v[:, None, :, :]).sum(dim=2)) / (ec * den[:, None, :] + e.sum(dim=2))
    # state after the chunk: token i decayed (n-1-i) times, the incoming state n times
    tail = (n - 1 - pos)[None, :, None] * w + k  # [B, i, C]
    carried_end = mx + n * w
    p_end = torch.maximum(tail.amax(dim=1), carried_end)
    et = torch.exp(tail - p_end[:, None, :])
    ece = torch.exp(carried_end - p_end)
    return y, ece * num + (et * v).sum(dim=1), ece * den + et.sum(dim=1), p_end


def wkv_chunked(w, u, k, v, state: State | None = None, chunk: int = 8) -> tuple[torch.Tensor, State]:
    """Same sums as ``wkv_sequential`` in closed form per chunk of ``chunk`` tokens (O(T * chunk) work)."""
    check_wkv_args(w, u, k, v, state)
    w, u, kk, vv, num, den, mx = _prepare(w, u, k, v, state)
    ys = []
    for start in range(0, kk.shape[1], chunk):
        y, num, den, mx = _chunk(w, u, kk[:, start : start + chunk], vv[:, start : start + chunk], num, den, mx)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else kk.new_zeros(kk.shape)
    return y.to(k.dtype), _as_state(num, den, mx)


def wkv_torch(w, u, k, v, state: State | None = None) -> tuple[torch.Tensor, State]:
    """The reference the model runs on a CPU: one step for a single token, the chunked closed form otherwise."""
    if k.shape[1] == 1:
        return wkv_sequential(w, u, k, v, state)
    return wkv_chunked(w, u, k, v, state)
