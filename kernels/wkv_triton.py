"""RWKV-4 WKV recurrence in Triton, forward and backward; same function and gradients as ``wkv_torch``.

One program per (batch row, block of channels) walks the sequence, so every load and store is contiguous along
the channels, arithmetic and state are fp32 (fp64 for fp64 tensors) whatever the storage type, and nothing is
sized by the sequence length: there is no T limit.

The forward saves the state ``(num, den, max)`` only at the start of every chunk of ``CHUNK`` tokens (3 / CHUNK
of the size of k). The backward takes the chunks last to first: it recomputes the chunk's per-token states from
its checkpoint into a per-program scratch of ``CHUNK`` rows (cache-resident), then walks the chunk backwards.
Its gradient is the one ``wkv_torch.wkv_scan`` writes out in torch (see its ``backward``): the scaled gradients
gN, gD of the true numerator and denominator run backwards with the state's own decay, and the gradient of the
returned maximum follows the running maximum back to the term that attains it. Memory traffic is thus close to
the floor: the forward reads k, v and writes y; the backward reads k, v, dy and writes dk, dv.

A padding mask (``HAS_MASK``: one byte per (row, token), nonzero = real) joins the test that already stops the
recurrence past the sequence's end: a padded token leaves the state, and every gradient carried through it, as
they were, and its output and its gradients are 0, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_support as support
from .wkv_torch import State, check_wkv_args, fresh_state

# The kernels below are Triton programs, compiled (or interpreted) at their first launch by ``support.launch``.


def _wkv_forward_kernel(
    w_ptr,
    u_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,  # [B, T] int8, nonzero = a real token (read only with HAS_MASK)
    state_in_ptr,  # [3, B, C]: num, den, max
    y_ptr,
    state_out_ptr,  # [3, B, C]
    checkpoint_ptr,  # [B, n_chunks, 3, C]: the state at every chunk start
    B,
    T,
    C,
    n_chunks,
    ACC: tl.constexpr,
    SAVE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    w = tl.load(w_ptr + cs, mask=cmask, other=0).to(ACC)
    u = tl.load(u_ptr + cs, mask=cmask, other=0).to(ACC)
    row = b * C + cs
    num = tl.load(state_in_ptr + row, mask=cmask, other=0).to(ACC)
    den = tl.load(state_in_ptr + B * C + row, mask=cmask, other=0).to(ACC)
    mx = tl.load(state_in_ptr + 2 * B * C + row, mask=cmask, other=0).to(ACC)
    seq = b * T * C + cs
    for chunk in range(0, n_chunks):
        if SAVE:
            saved = checkpoint_ptr + (b * n_chunks + chunk) * 3 * C + cs
            tl.store(saved, num, mask=cmask)
            tl.store(saved + C, den, mask=cmask)
            tl.store(saved + 2 * C, mx, mask=cmask)
        for s in tl.static_range(CHUNK):
            t = chunk * CHUNK + s
            inside = t < T
            live = inside
            if HAS_MASK:
                live = inside & (tl.load(mask_ptr + b * T + t, mask=inside, other=0) != 0)
            at = seq + t * C
            k = tl.load(k_ptr + at, mask=cmask & live, other=0).to(ACC)
            v = tl.load(v_ptr + at, mask=cmask & live, other=0).to(ACC)
            uk = u + k
            q = tl.maximum(mx, uk)
            e1 = tl.exp(mx - q)
            e2 = tl.exp(uk - q)
            y = tl.where(live, (e1 * num + e2 * v) / (e1 * den + e2), 0.0)
            tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=cmask & inside)
            p = tl.maximum(mx + w, k)
            f1 = tl.exp(mx + w - p)
            f2 = tl.exp(k - p)
            num = tl.where(live, f1 * num + f2 * v, num)
            den = tl.where(live, f1 * den + f2, den)
            mx = tl.where(live, p, mx)
    tl.store(state_out_ptr + row, num, mask=cmask)
    tl.store(state_out_ptr + B * C + row, den, mask=cmask)
    tl.store(state_out_ptr + 2 * B * C + row, mx, mask=cmask)


def _wkv_backward_kernel(
    w_ptr,
    u_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,  # [B, T] int8, as the forward's
    checkpoint_ptr,  # [B, n_chunks, 3, C] from the forward
    state_out_ptr,  # [3, B, C] from the forward
    grad_y_ptr,
    grad_state_out_ptr,  # [3, B, C]
    grad_k_ptr,
    grad_v_ptr,
    grad_w_ptr,  # [B, C]: per batch row, summed by the caller
    grad_u_ptr,  # [B, C]
    grad_state_in_ptr,  # [3, B, C]
    scratch_ptr,  # [B, CHUNK, 3, C]: the recomputed states of the current chunk
    B,
    T,
    C,
    n_chunks,
    ACC: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    w = tl.load(w_ptr + cs, mask=cmask, other=0).to(ACC)
    u = tl.load(u_ptr + cs, mask=cmask, other=0).to(ACC)
    row = b * C + cs
    gn = tl.load(grad_state_out_ptr + row, mask=cmask, other=0).to(ACC)
    gd = tl.load(grad_state_out_ptr + B * C + row, mask=cmask, other=0).to(ACC)
    g_max = tl.load(grad_state_out_ptr + 2 * B * C + row, mask=cmask, other=0).to(ACC)
    num_end = tl.load(state_out_ptr + row, mask=cmask, other=0).to(ACC)
    den_end = tl.load(state_out_ptr + B * C + row, mask=cmask, other=0).to(ACC)
    # gradient at the running maximum after the current token (num = N e^-max and den owe it their share)
    reach = g_max - gn * num_end - gd * den_end
    gw = tl.full([BLOCK_C], 0, ACC)
    gu = tl.full([BLOCK_C], 0, ACC)
    seq = b * T * C + cs
    scratch = scratch_ptr + b * CHUNK * 3 * C + cs
    for back in range(0, n_chunks):
        chunk = n_chunks - 1 - back
        saved = checkpoint_ptr + (b * n_chunks + chunk) * 3 * C + cs
        num = tl.load(saved, mask=cmask, other=0)
        den = tl.load(saved + C, mask=cmask, other=0)
        mx = tl.load(saved + 2 * C, mask=cmask, other=0)
        for s in tl.static_range(CHUNK):  # recompute the state before each token of the chunk
            t = chunk * CHUNK + s
            live = t < T
            if HAS_MASK:
                live = live & (tl.load(mask_ptr + b * T + t, mask=live, other=0) != 0)
            tl.store(scratch + s * 3 * C, num, mask=cmask)
            tl.store(scratch + s * 3 * C + C, den, mask=cmask)
            tl.store(scratch + s * 3 * C + 2 * C, mx, mask=cmask)
            k = tl.load(k_ptr + seq + t * C, mask=cmask & live, other=0).to(ACC)
            v = tl.load(v_ptr + seq + t * C, mask=cmask & live, other=0).to(ACC)
            p = tl.maximum(mx + w, k)
            f1 = tl.exp(mx + w - p)
            f2 = tl.exp(k - p)
            num = tl.where(live, f1 * num + f2 * v, num)
            den = tl.where(live, f1 * den + f2, den)
            mx = tl.where(live, p, mx)
        tl.debug_barrier()
        mx_next = mx  # the running maximum after the token being differentiated
        for i in tl.static_range(CHUNK):
            s = CHUNK - 1 - i
            t = chunk * CHUNK + s
            inside = t < T
            live = inside
            if HAS_MASK:
                live = inside & (tl.load(mask_ptr + b * T + t, mask=inside, other=0) != 0)
            at = seq + t * C
            num = tl.load(scratch + s * 3 * C, mask=cmask, other=0)
            den = tl.load(scratch + s * 3 * C + C, mask=cmask, other=0)
            mx = tl.load(scratch + s * 3 * C + 2 * C, mask=cmask, other=0)
            k = tl.load(k_ptr + at, mask=cmask & live, other=0).to(ACC)
            v = tl.load(v_ptr + at, mask=cmask & live, other=0).to(ACC)
            gy = tl.load(grad_y_ptr + at, mask=cmask & live, other=0).to(ACC)
            # output y_t = (e1 num + e2 v) / (e1 den + e2)
            uk = u + k
            q = tl.maximum(mx, uk)
            e1 = tl.exp(mx - q)
            e2 = tl.exp(uk - q)
            den_out = e1 * den + e2
            y = (e1 * num + e2 * v) / den_out
            gy_den = gy / den_out
            g_bonus = gy_den * e2 * (v - y)
            # state update to the next token, and which term the running maximum kept
            f1 = tl.exp(mx + w - mx_next)
            f2 = tl.exp(tl.where(live, k - mx_next, float("-inf")))  # (a padded token's weight is 0, not inf)
            carried = mx + w >= k
            gk = g_bonus + f2 * (v * gn + gd) + tl.where(carried, 0.0, reach)
            gv = gy_den * e2 + f2 * gn
            gk = tl.where(live, gk, 0.0)
            gv = tl.where(live, gv, 0.0)
            tl.store(grad_k_ptr + at, gk.to(grad_k_ptr.dtype.element_ty), mask=cmask & inside)
            tl.store(grad_v_ptr + at, gv.to(grad_v_ptr.dtype.element_ty), mask=cmask & inside)
            gw += tl.where(live, f1 * (num * gn + den * gd) + tl.where(carried, reach, 0.0), 0.0)
            gu += tl.where(live, g_bonus, 0.0)
            to_num = gy_den * e1
            gn = tl.where(live, f1 * gn + to_num, gn)
            gd = tl.where(live, f1 * gd - to_num * y, gd)
            reach = tl.where(live & ~carried, 0.0, reach)
            mx_next = tl.where(live, mx, mx_next)
        tl.debug_barrier()
    num0 = tl.load(checkpoint_ptr + b * n_chunks * 3 * C + cs, mask=cmask, other=0)
    den0 = tl.load(checkpoint_ptr + b * n_chunks * 3 * C + C + cs, mask=cmask, other=0)
    tl.store(grad_state_in_ptr + row, gn, mask=cmask)
    tl.store(grad_state_in_ptr + B * C + row, gd, mask=cmask)
    tl.store(grad_state_in_ptr + 2 * B * C + row, gn * num0 + gd * den0 + reach, mask=cmask)
    tl.store(grad_w_ptr + row, gw, mask=cmask)
    tl.store(grad_u_ptr + row, gu, mask=cmask)


class _WKVTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, u, k, v, num, den, mx, mask, chunk, block):
        batch, length, channels = k.shape
        acc = support.accumulator(k.dtype)
        sdtype = support.state_dtype(k.dtype)
        w, u, k, v = (t.contiguous() for t in (w, u, k, v))
        mask_bytes = mask.to(torch.int8).contiguous() if mask is not None else k  # k: never read without a mask
        state_in = torch.stack([num, den, mx]).to(sdtype)
        n_chunks = triton.cdiv(length, chunk)
        save = any(ctx.needs_input_grad[:7])
        y = support.empty(k.shape, k.dtype, k.device)
        state_out = support.empty((3, batch, channels), sdtype, k.device)
        checkpoints = support.empty((batch, n_chunks, 3, channels) if save else (1,), sdtype, k.device)
        support.launch(
            _wkv_forward_kernel, support.grid(batch, channels, block),
            (w, u, k, v, mask_bytes, state_in, y, state_out, checkpoints, batch, length, channels, n_chunks),
            ACC=acc, SAVE=save, HAS_MASK=mask is not None, CHUNK=chunk, BLOCK_C=block,
        )  # fmt: skip
        if save:
            ctx.save_for_backward(w, u, k, v, mask_bytes, checkpoints, state_out)
            ctx.has_mask = mask is not None
            ctx.config = (chunk, block, acc, (num.dtype, den.dtype, mx.dtype))
        return y, *state_out.unbind(0)

    @staticmethod
    def backward(ctx, grad_y, grad_num, grad_den, grad_max):
        w, u, k, v, mask_bytes, checkpoints, state_out = ctx.saved_tensors
        chunk, block, acc, state_dtypes = ctx.config
        batch, length, channels = k.shape
        sdtype = state_out.dtype
        grad_state_out = torch.stack([grad_num, grad_den, grad_max]).to(sdtype)
        grad_k = support.empty(k.shape, k.dtype, k.device)
        grad_v = support.empty(v.shape, v.dtype, v.device)
        grad_w = support.empty((batch, channels), sdtype, k.device)
        grad_u = support.empty((batch, channels), sdtype, k.device)
        grad_state_in = support.empty((3, batch, channels), sdtype, k.device)
        scratch = support.empty((batch, chunk, 3, channels), sdtype, k.device)
        support.launch(
            _wkv_backward_kernel, support.grid(batch, channels, block),
            (
                w, u, k, v, mask_bytes, checkpoints, state_out, grad_y.contiguous(), grad_state_out,
                grad_k, grad_v, grad_w, grad_u, grad_state_in, scratch,
                batch, length, channels, checkpoints.shape[1],
            ),
            ACC=acc, HAS_MASK=ctx.has_mask, CHUNK=chunk, BLOCK_C=block,
        )  # fmt: skip
        grad_state = (g.to(d) for g, d in zip(grad_state_in.unbind(0), state_dtypes, strict=True))
        return grad_w.sum(0).to(w.dtype), grad_u.sum(0).to(u.dtype), grad_k, grad_v, *grad_state, None, None, None


def wkv_triton(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    mask: torch.Tensor | None = None,
    *,
    chunk: int = support.CHUNK,
    block_c: int | None = None,
) -> tuple[torch.Tensor, State]:
    """Triton WKV: same arguments, results and gradients as ``spikegpt.kernels.wkv``.

    ``chunk`` (tokens per checkpoint) and ``block_c`` (channels per program, a power of two) tune the launch.
    """
    check_wkv_args(w, u, k, v, state, mask)
    support.check_device(k)
    if state is None:
        state = fresh_state(k.shape[0], k.shape[2], k.device)
    if k.shape[1] == 0:
        return k.new_empty(k.shape), tuple(s.to(support.state_dtype(k.dtype)) for s in state)
    chunk, block = support.tiling(k.shape[2], chunk, block_c)
    y, *new_state = _WKVTriton.apply(w, u, k, v, *state, mask, chunk, block)
    return y, tuple(new_state)
