"""Float64 direct formulas for WKV and LIF, random inputs, and the error measure the kernel tests share."""

from __future__ import annotations

import math

import torch

from spikegpt.kernels.lif_torch import DEFAULT_LIF


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (normwise: meaningful where single elements are near zero).

    NaN anywhere in ``actual`` counts as an infinite error.
    """
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        return math.inf
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def wkv_inputs(batch, length, channels, *, seed, decay_scale=1.0, k_scale=1.0, with_state=False, dtype=torch.float32):
    """w = -exp(time_decay), u, k, v and optionally a valid carried state (den >= 1, as after real tokens)."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.randn(channels, generator=g, dtype=torch.float64) * decay_scale)
    u = torch.randn(channels, generator=g, dtype=torch.float64)
    k = torch.randn(batch, length, channels, generator=g, dtype=torch.float64) * k_scale
    v = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    state = None
    if with_state:
        den = 1 + torch.rand(batch, channels, generator=g, dtype=torch.float64) * 3
        num = den * torch.randn(batch, channels, generator=g, dtype=torch.float64)
        state = (num, den, torch.randn(batch, channels, generator=g, dtype=torch.float64) * k_scale)
    return w.float(), u.float(), k.to(dtype), v.to(dtype), None if state is None else tuple(s.float() for s in state)


def wkv_direct(w, u, k, v, state=None):
    """WKV by its definition in float64: each output an explicit ratio of sums of exponentials, O(T^2).

    Returns y and the final state in the stable representation (num, den, max), max computed as the largest
    exponent among the terms, num and den as the true sums scaled by e^-max.
    """
    w, u, k, v = (x.double() for x in (w, u, k, v))
    length = k.shape[1]
    t = torch.arange(length, dtype=torch.float64)
    lag = t[:, None] - 1 - t[None, :]  # [t, i]
    expo = lag[None, :, :, None] * w + k[:, None, :, :]  # [B, t, i, C]; only i < t are terms
    weight = torch.exp(torch.where((lag >= 0)[None, :, :, None], expo, -math.inf))
    bonus = torch.exp(u + k)
    num_y = (weight * v[:, None]).sum(dim=2) + bonus * v
    den_y = weight.sum(dim=2) + bonus
    end_expo = (length - 1 - t)[None, :, None] * w + k  # [B, i, C]
    peak = end_expo.amax(dim=1)
    if state is not None:
        num0, den0, mx0 = (s.double() for s in state)
        carried = torch.exp(mx0[:, None, :] + t[None, :, None] * w)
        num_y = num_y + carried * num0[:, None, :]
        den_y = den_y + carried * den0[:, None, :]
        peak = torch.maximum(peak, mx0 + length * w)
    end = torch.exp(end_expo - peak[:, None, :])
    num_end = (end * v).sum(dim=1)
    den_end = end.sum(dim=1)
    if state is not None:
        back = torch.exp(mx0 + length * w - peak)
        num_end = num_end + back * num0
        den_end = den_end + back * den0
    return num_y / den_y, (num_end, den_end, peak)


def lif_direct(x, v0=None, params=DEFAULT_LIF):
    """Multi-step LIF by its definition in float64. The spike is a straight-through Heaviside: its value is
    ``h >= threshold`` and its derivative that of the surrogate's primitive (written here from its formula)."""
    tau, threshold, reset, surrogate, alpha = params.tau, params.threshold, params.reset, params.surrogate, params.alpha
    x = x.double()
    v = torch.zeros_like(x[:, 0]) if v0 is None else v0.double()
    spikes = []
    for t in range(x.shape[1]):
        h = v + (x[:, t] - v) / tau
        z = h - threshold
        if surrogate == "atan":
            smooth = torch.atan(math.pi / 2 * alpha * z) / math.pi
        else:
            smooth = 1 / (1 + torch.exp(-alpha * z))
        s = (z >= 0).double() + (smooth - smooth.detach())  # exactly 0 or 1
        v = h * (1 - s) if reset == "hard" else h - s * threshold
        spikes.append(s)
    return torch.stack(spikes, dim=1), v


def cotangents(outputs, seed):
    """Random upstream gradients for each output, so every output contributes to the backward. Their values are
    bf16-representable, hence exact in every dtype: runs in different dtypes see the same cotangents."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g).to(torch.bfloat16).to(o.dtype) for o in outputs]


def grads(fn, inputs, seed):
    """Run ``fn(*inputs)`` (returning a flat list of tensors), backpropagate random cotangents, and return the
    outputs and the gradient of every input that requires one."""
    inputs = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    outputs = fn(*inputs)
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents(outputs, seed), strict=True))
    leaves = [x for x in inputs if x is not None]
    return [o.detach() for o in outputs], list(torch.autograd.grad(loss, leaves))


def padding_mask(batch: int, length: int, seed: int) -> torch.Tensor:
    """``[batch, length]`` bool, True = a real token: row 0 padded on the left, row 1 on the right, row 2 all
    padding, the other rows at random positions (``batch`` >= 4 for all four kinds)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=g) < 0.6
    positions = torch.arange(length)
    for row, pattern in enumerate([positions >= length // 2, positions < length // 2, positions < 0][:batch]):
        mask[row] = pattern
    return mask


def _scatter_rows(rows: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Per row ``[1, n_real, C]`` outputs → ``[B, T, C]`` with each at its real positions and 0 at padded ones
    (out of place, so gradients flow)."""
    full = []
    for row, real in zip(rows, mask, strict=True):
        slots = torch.zeros(mask.shape[1], row.shape[2], dtype=row.dtype)
        full.append(slots.index_put((real.nonzero()[:, 0],), row[0]))
    return torch.stack(full)


def wkv_on_real_tokens(mask: torch.Tensor):
    """``wkv_direct`` as a padded batch must compute it: each row over its real tokens alone (a row without any
    keeps its state), y 0 at padded positions."""

    def run(w, u, k, v, state=None):
        batch, channels = k.shape[0], k.shape[2]
        if state is None:
            fresh = (torch.zeros(batch, channels), torch.zeros(batch, channels), torch.full((batch, channels), -1e38))
            state = tuple(s.double() for s in fresh)
        ys, ends = [], []
        for b, real in enumerate(mask):
            row_state = tuple(s[b : b + 1].double() for s in state)
            if real.any():
                y, row_state = wkv_direct(w, u, k[b : b + 1, real], v[b : b + 1, real], row_state)
            else:
                y = k.new_zeros(1, 0, channels).double()
            ys.append(y)
            ends.append(row_state)
        return _scatter_rows(ys, mask), tuple(torch.cat(column) for column in zip(*ends, strict=True))

    return run


def lif_on_real_tokens(mask: torch.Tensor):
    """``lif_direct`` as a padded batch must compute it: each row over its real tokens alone (a row without any
    keeps its membrane), no spike at padded positions."""

    def run(x, v0=None, params=DEFAULT_LIF):
        spikes, ends = [], []
        for b, real in enumerate(mask):
            v = torch.zeros(1, x.shape[2], dtype=torch.float64) if v0 is None else v0[b : b + 1].double()
            s = x.new_zeros(1, 0, x.shape[2]).double()
            if real.any():
                s, v = lif_direct(x[b : b + 1, real], v, params)
            spikes.append(s)
            ends.append(v)
        return _scatter_rows(spikes, mask), torch.cat(ends)

    return run
