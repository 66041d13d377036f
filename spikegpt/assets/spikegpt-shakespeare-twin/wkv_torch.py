"""RWKV-4 WKV recurrence: the PyTorch reference that defines the operation.

For each batch row b and channel c, with w = -exp(time_decay) < 0 and u = time_first:

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

A padding ``mask`` ``[B, T]`` (bool, True = a real token; None = all real) skips positions: a padded position
leaves the state exactly as it was (no decay, no contribution) and outputs 0, so a padded row computes what its
real tokens alone would.

Sums before the sequence count as the carried state, kept in the numerically stable form of RWKV-4's CUDA
kernel (BlinkDL/RWKV-LM ``wkv_cuda.cu``): ``(num, den, max)`` with the true numerator ``num * e^max`` and the true
denominator ``den * e^max``; a fresh sequence starts at ``(0, 0, -1e38)``. State is always fp32; ``y`` has the
dtype of ``k``; arithmetic is fp32 (fp64 for fp64 inputs).

Three forms compute the same function:

- ``wkv_sequential``: one stable step per token, differentiated by autograd. The definition.
- ``wkv_chunked``: the sums in closed form over chunks of tokens (one max-subtracted exponential per (t, i)
  pair inside a chunk, the state carried between chunks), differentiated by autograd.
- ``wkv_scan``: the sequential recurrence with a hand-written backward. Only the two truly sequential parts
  (the running maximum and the two first-order linear recurrences it stabilises) loop over tokens, a few
  operations on ``[B, C]`` slices per token; everything else is vectorised over the whole sequence. Its
  backward is the one the Triton kernel implements (see ``wkv_triton``), so this is also the readable
  statement of that kernel's gradient. The fastest form on a CPU (``bench/wkv_lif.py``), used by ``wkv_torch``.
"""

from __future__ import annotations

import torch

from .errors import KernelArgumentError
from .scan import linear_scan

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

FRESH_MAX = -1e38  # the stable form's "no tokens yet" exponent, as in RWKV-4's kernel


def fresh_state(batch: int, channels: int, device: torch.device | str = "cpu") -> State:
    """The state of a sequence that has seen no tokens."""
    zeros = torch.zeros(batch, channels, dtype=torch.float32, device=device)
    return zeros, zeros.clone(), torch.full_like(zeros, FRESH_MAX)


def check_mask(mask: torch.Tensor | None, x: torch.Tensor, op: str) -> None:
    """A padding mask must be bool ``[B, T]`` for x ``[B, T, C]``, on x's device."""
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.shape != x.shape[:2] or mask.device != x.device:
        raise KernelArgumentError(
            f"{op} expects a bool padding mask of shape [B, T] = {tuple(x.shape[:2])} on {x.device}, got "
            f"{mask.dtype} {tuple(mask.shape)} on {mask.device}"
        )


def check_wkv_args(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None,
    mask: torch.Tensor | None = None,
) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise KernelArgumentError(
            f"wkv expects k and v of the same shape [B, T, C], got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if not k.is_floating_point() or k.dtype != v.dtype:
        raise KernelArgumentError(f"wkv expects k and v of one floating dtype, got {k.dtype} and {v.dtype}")
    channels = k.shape[2]
    if w.shape != (channels,) or u.shape != (channels,):
        raise KernelArgumentError(
            f"wkv expects w and u of shape [C] = [{channels}], got {tuple(w.shape)} and {tuple(u.shape)}"
        )
    if state is not None and (len(state) != 3 or any(s.shape != (k.shape[0], channels) for s in state)):
        shapes = [tuple(s.shape) for s in state]
        raise KernelArgumentError(
            f"wkv expects a state of three [B, C] = {(k.shape[0], channels)} tensors, got {shapes}"
        )
    devices = {t.device for t in (w, u, k, v, *(state or ()))}
    if len(devices) > 1:
        raise KernelArgumentError(f"wkv expects all tensors on one device, got {sorted(map(str, devices))}")
    check_mask(mask, k, "wkv")


def _compute_dtype(k: torch.Tensor) -> torch.dtype:
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def _prepare(w, u, k, v, state):
    dtype = _compute_dtype(k)
    if state is None:
        state = fresh_state(k.shape[0], k.shape[2], k.device)
    # (a conversion only where one is needed: a traced decoding step then records none in fp32)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in (w, u, k, v, *state))


def _as_state(num: torch.Tensor, den: torch.Tensor, mx: torch.Tensor) -> State:
    if num.dtype in (torch.float32, torch.float64):
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


def skip_padded(live: torch.Tensor, stepped: tuple[torch.Tensor, ...], before: tuple[torch.Tensor, ...]):
    """A step's (y, num, den, max) where ``live`` ([B, 1] bool) is True, else (0, the state before): a padded
    position. The step's values are finite everywhere, so the unused branch passes no NaN to any gradient."""
    y, *state = stepped
    return torch.where(live, y, 0), *(torch.where(live, new, old) for new, old in zip(state, before, strict=True))


def wkv_sequential(
    w, u, k, v, state: State | None = None, mask: torch.Tensor | None = None, *, step=wkv_step
) -> tuple[torch.Tensor, State]:
    """The definition: one stable step per token. Returns (y [B, T, C], new state).

    ``step`` is ``wkv_step`` or a function computing the same (``bench/wkv_lif.py`` passes a compiled one).
    """
    check_wkv_args(w, u, k, v, state, mask)
    w, u, kk, vv, num, den, mx = _prepare(w, u, k, v, state)
    ys = []
    for t in range(kk.shape[1]):
        stepped = step(w, u, kk[:, t], vv[:, t], num, den, mx)
        y, num, den, mx = stepped if mask is None else skip_padded(mask[:, t, None], stepped, (num, den, mx))
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else kk.new_zeros(kk.shape)
    return (y if y.dtype == k.dtype else y.to(k.dtype)), _as_state(num, den, mx)


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


def _running_max(w: torch.Tensor, k: torch.Tensor, mx: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """The stable state's exponents ``p[t+1] = max(p[t] + w, k[t])`` from ``p[0] = mx`` (``p[t+1] = p[t]`` where
    ``live`` [T, B, 1] is False); [T + 1, B, C]."""
    p = torch.empty((k.shape[0] + 1, *k.shape[1:]), dtype=k.dtype, device=k.device)
    p[0] = mx
    for t in range(k.shape[0]):
        if live is None:
            torch.maximum(p[t] + w, k[t], out=p[t + 1])
        else:
            p[t + 1] = torch.where(live[t], torch.maximum(p[t] + w, k[t]), p[t])
    return p


def _state_factors(w, k, p, live):
    """Per token (token-major): the state's decay ``f1`` and the token's weight ``f2`` (``s[t+1] = f1 s[t] +
    f2 (v, 1)``) and whether the running maximum kept the carried term; a padded token (``live`` False) keeps the
    state: f1 = 1, f2 = 0, carried."""
    f1 = torch.exp(p[:-1] + w - p[1:])
    f2 = torch.exp(k - p[1:])
    carried = p[:-1] + w >= k
    if live is None:
        return f1, f2, carried
    return torch.where(live, f1, 1), torch.where(live, f2, 0), carried | ~live


def _scan_output(u, k, v, num, den, p):
    """Per token (token-major [T, B, C]): y and what the backward needs, from the state before each token."""
    uk = u + k
    q = torch.maximum(p, uk)
    e1 = torch.exp(p - q)
    e2 = torch.exp(uk - q)
    den_out = e1 * den + e2
    return (e1 * num + e2 * v) / den_out, e1, e2, den_out


class _WKVScan(torch.autograd.Function):
    """The stable recurrence, token-major inside, with the gradient written out (derivation in ``backward``)."""

    @staticmethod
    def forward(ctx, w, u, k, v, num0, den0, mx0, mask):
        dtype = _compute_dtype(k)
        wc, uc = w.to(dtype), u.to(dtype)
        kt = k.transpose(0, 1).to(dtype).contiguous()  # [T, B, C]: contiguous per-token slices
        vt = v.transpose(0, 1).to(dtype).contiguous()
        live = None if mask is None else mask.t()[:, :, None]  # [T, B, 1]
        p = _running_max(wc, kt, mx0.to(dtype), live)
        f1, f2, _ = _state_factors(wc, kt, p, live)
        # numerator and denominator share the decay: one scan over both, stacked on axis 1
        num, den = linear_scan(f1[:, None], torch.stack([f2 * vt, f2], 1), torch.stack([num0, den0]).to(dtype)).unbind(
            1
        )
        y = _scan_output(uc, kt, vt, num[:-1], den[:-1], p[:-1])[0]
        if live is not None:
            y = torch.where(live, y, 0)
        ctx.save_for_backward(wc, uc, kt, vt, num, den, p, live)
        ctx.dtypes = (w.dtype, u.dtype, k.dtype, num0.dtype, den0.dtype, mx0.dtype)
        state_dtype = dtype if dtype == torch.float64 else torch.float32
        return (y.transpose(0, 1).to(k.dtype), *(s[-1].to(state_dtype) for s in (num, den, p)))

    @staticmethod
    def backward(ctx, gy, g_num, g_den, g_max):
        # With true sums N_t = num_t e^{p_t}, D_t = den_t e^{p_t} (the state before token t), the gradient of the
        # loss with respect to them, scaled by e^{p_t} (gN_t, gD_t: bounded where the unscaled ones overflow),
        # runs backwards as gN_t = f1_t gN_{t+1} + gy_t e1_t / den_out_t (gD_t likewise with -gy_t y_t), from
        # gN_T = g_num, gD_T = g_den. The returned maximum p_T = max(p_0 + T w, max_i (T-1-i) w + k_i) is a
        # function of its own: its gradient (g_max, less what num_T = N_T e^{-p_T} and den_T owe it) goes to
        # whichever term attains the maximum, found by following the running maximum back.
        # A padded token (``live`` False) passes the state through and outputs 0: it receives no gradient, passes
        # gN, gD and the running maximum's gradient through unchanged (f1 = 1, f2 = 0, carried), and owes w nothing.
        w, u, k, v, num, den, p, live = ctx.saved_tensors
        w_dtype, u_dtype, k_dtype, *state_dtypes = ctx.dtypes
        dtype = k.dtype
        gy = gy.transpose(0, 1).to(dtype)
        if live is not None:
            gy = torch.where(live, gy, 0)
        g_num, g_den, g_max = g_num.to(dtype), g_den.to(dtype), g_max.to(dtype)
        y, e1, e2, den_out = _scan_output(u, k, v, num[:-1], den[:-1], p[:-1])
        f1, f2, carried = _state_factors(w, k, p, live)
        through_w = f1 if live is None else f1 * live  # the decays that w entered
        gy_den = gy / den_out
        to_num = gy_den * e1
        gn, gd = linear_scan(
            f1[:, None], torch.stack([to_num, -to_num * y], 1), torch.stack([g_num, g_den]), reverse=True
        ).unbind(1)
        gn_next, gd_next = gn[1:], gd[1:]
        g_bonus = gy_den * e2 * (v - y)
        gk = g_bonus + f2 * (v * gn_next + gd_next)
        gv = gy_den * e2 + f2 * gn_next
        gw = (through_w * (num[:-1] * gn_next + den[:-1] * gd_next)).sum(dim=(0, 1))
        # the running maximum: step t kept the carried term (p_t + w) or took k_t
        carried = carried.to(dtype)
        g_peak = g_max - g_num * num[-1] - g_den * den[-1]
        # reaches[t]: all steps after t kept the carried term, so the gradient at p_{t+1} is g_peak
        reaches = torch.cat([carried[1:].flip(0).cumprod(0).flip(0), torch.ones_like(carried[:1])]) * g_peak
        gk = gk + reaches * (1 - carried)
        gw = gw + (reaches * (carried if live is None else carried * live)).sum(dim=(0, 1))
        g_mx0 = gn[0] * num[0] + gd[0] * den[0] + reaches[0] * carried[0]
        return (
            gw.to(w_dtype),
            g_bonus.sum(dim=(0, 1)).to(u_dtype),
            gk.transpose(0, 1).to(k_dtype),
            gv.transpose(0, 1).to(k_dtype),
            *(g.to(d) for g, d in zip((gn[0], gd[0], g_mx0), state_dtypes, strict=True)),
            None,
        )


# Tokens per scan block: each block's [tokens, B, C] intermediates hold about this many elements, which keeps
# them cache-sized; measured on a CPU, 3x faster forward than one block at (8, 1024, 512), equal at small shapes.
SCAN_BLOCK_ELEMENTS = 1 << 19


def wkv_scan(
    w, u, k, v, state: State | None = None, mask: torch.Tensor | None = None, *, tokens_per_block: int | None = None
) -> tuple[torch.Tensor, State]:
    """Same function as ``wkv_sequential``, with a hand-written backward and the non-recurrent work vectorised
    over blocks of tokens (the state carried from block to block, forward and backward); by default each block
    has about ``SCAN_BLOCK_ELEMENTS`` elements."""
    check_wkv_args(w, u, k, v, state, mask)
    if k.shape[1] == 0:
        return wkv_sequential(w, u, k, v, state)
    if state is None:
        state = fresh_state(k.shape[0], k.shape[2], k.device)
    tokens = tokens_per_block or max(1, SCAN_BLOCK_ELEMENTS // (k.shape[0] * k.shape[2]))
    # split, not slices: its backward assembles the gradient once, where each slice's would fill a full-size one
    k_blocks, v_blocks = k.split(tokens, dim=1), v.split(tokens, dim=1)
    mask_blocks = mask.split(tokens, dim=1) if mask is not None else (None,) * len(k_blocks)
    ys = []
    for k_block, v_block, mask_block in zip(k_blocks, v_blocks, mask_blocks, strict=True):
        y, *state = _WKVScan.apply(w, u, k_block, v_block, *state, mask_block)
        ys.append(y)
    return torch.cat(ys, dim=1) if len(ys) > 1 else ys[0], tuple(state)


def wkv_torch(w, u, k, v, state: State | None = None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
    """The reference the model runs on a CPU: one step for a single token, the scan form otherwise."""
    if k.shape[1] == 1:
        return wkv_sequential(w, u, k, v, state, mask)
    return wkv_scan(w, u, k, v, state, mask)
