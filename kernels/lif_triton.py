"""Multi-step LIF neuron in Triton, forward and backward; same function and gradients as ``lif_torch``.

One program per (batch row, block of channels) walks the tokens with the membrane in a register (fp32, fp64 for
fp64 input). The charge ``h = v + (x - v) * (1/tau)`` uses the reference's float operations in its order, and
the kernel is compiled without fusing multiply-adds, so spikes are bit-identical to the reference. Spike counts
per channel come out of the same pass.

The forward saves the membrane only at the start of every chunk of ``CHUNK`` tokens; the backward recomputes one
chunk's charged membranes from that checkpoint into a per-program scratch (cache-resident), then runs the
reference's reverse recurrence over it: the forward reads x and writes spikes, the backward reads x and the
spikes' gradient and writes x's.

A padding mask (``HAS_MASK``: one byte per (row, token), nonzero = real) joins the test that already stops the
neuron past the sequence's end: at a padded token nothing fires, the membrane and its gradient pass through, and
the spike and x's gradient are 0, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_support as support
from .lif_torch import DEFAULT_LIF, LIFParams, check_lif_args
from .surrogate import SURROGATES

# The kernels below are Triton programs, compiled (or interpreted) at their first launch by ``support.launch``.


def _lif_forward_kernel(
    x_ptr,
    v0_ptr,
    mask_ptr,  # [B, T] int8, nonzero = a real token (read only with HAS_MASK)
    params_ptr,  # [1/tau, threshold, alpha, 1 - 1/tau] in the membrane's dtype
    spikes_ptr,
    v_last_ptr,  # [B, C]
    counts_ptr,  # [B, C] fp32
    checkpoint_ptr,  # [B, n_chunks, C]: the membrane at every chunk start
    T,
    C,
    n_chunks,
    HAS_V0: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HARD_RESET: tl.constexpr,
    ACC: tl.constexpr,
    SAVE: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    inv_tau = tl.load(params_ptr)
    threshold = tl.load(params_ptr + 1)
    row = b * C + cs
    if HAS_V0:
        v = tl.load(v0_ptr + row, mask=cmask, other=0).to(ACC)
    else:
        v = tl.full([BLOCK_C], 0, ACC)
    count = tl.full([BLOCK_C], 0, tl.float32)
    seq = b * T * C + cs
    for chunk in range(0, n_chunks):
        if SAVE:
            tl.store(checkpoint_ptr + (b * n_chunks + chunk) * C + cs, v, mask=cmask)
        for s in tl.static_range(CHUNK):
            t = chunk * CHUNK + s
            inside = t < T
            live = inside
            if HAS_MASK:
                live = inside & (tl.load(mask_ptr + b * T + t, mask=inside, other=0) != 0)
            at = seq + t * C
            x = tl.load(x_ptr + at, mask=cmask & live, other=0).to(ACC)
            h = v + (x - v) * inv_tau
            fired = (h >= threshold) & live
            spike = tl.where(fired, 1.0, 0.0)  # (Triton's interpreter cannot cast booleans to bf16)
            tl.store(spikes_ptr + at, spike.to(spikes_ptr.dtype.element_ty), mask=cmask & inside)
            count += fired.to(tl.float32)
            if HARD_RESET:
                after = tl.where(fired, 0.0, h)
            else:
                after = tl.where(fired, h - threshold, h)
            v = tl.where(live, after, v)
    tl.store(v_last_ptr + row, v, mask=cmask)
    tl.store(counts_ptr + row, count, mask=cmask)


def _lif_backward_kernel(
    x_ptr,
    mask_ptr,  # [B, T] int8, as the forward's
    params_ptr,
    checkpoint_ptr,  # [B, n_chunks, C] from the forward
    grad_spikes_ptr,
    grad_v_last_ptr,  # [B, C]
    grad_x_ptr,
    grad_v0_ptr,  # [B, C]
    scratch_ptr,  # [B, CHUNK, C]: the recomputed charged membranes of the current chunk
    T,
    C,
    n_chunks,
    HAS_MASK: tl.constexpr,
    HARD_RESET: tl.constexpr,
    SURROGATE: tl.constexpr,  # index in surrogate.SURROGATES
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    inv_tau = tl.load(params_ptr)
    threshold = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    keep = tl.load(params_ptr + 3)
    row = b * C + cs
    gv = tl.load(grad_v_last_ptr + row, mask=cmask, other=0).to(ACC)
    seq = b * T * C + cs
    scratch = scratch_ptr + b * CHUNK * C + cs
    for back in range(0, n_chunks):
        chunk = n_chunks - 1 - back
        v = tl.load(checkpoint_ptr + (b * n_chunks + chunk) * C + cs, mask=cmask, other=0)
        for s in tl.static_range(CHUNK):  # recompute the charged membrane of each token of the chunk
            t = chunk * CHUNK + s
            live = t < T
            if HAS_MASK:
                live = live & (tl.load(mask_ptr + b * T + t, mask=live, other=0) != 0)
            x = tl.load(x_ptr + seq + t * C, mask=cmask & live, other=0).to(ACC)
            h = v + (x - v) * inv_tau
            tl.store(scratch + s * C, h, mask=cmask)
            fired = h >= threshold
            if HARD_RESET:
                after = tl.where(fired, 0.0, h)
            else:
                after = tl.where(fired, h - threshold, h)
            v = tl.where(live, after, v)
        tl.debug_barrier()
        for i in tl.static_range(CHUNK):
            s = CHUNK - 1 - i
            t = chunk * CHUNK + s
            inside = t < T
            live = inside
            if HAS_MASK:
                live = inside & (tl.load(mask_ptr + b * T + t, mask=inside, other=0) != 0)
            at = seq + t * C
            h = tl.load(scratch + s * C, mask=cmask, other=0)
            gs = tl.load(grad_spikes_ptr + at, mask=cmask & live, other=0).to(ACC)
            z = h - threshold  # the surrogate's derivative, as surrogate.surrogate_grad
            if SURROGATE == 0:  # atan
                scaled = 1.5707963267948966 * alpha * z  # pi / 2 * alpha * z
                sg = alpha / 2 / (1 + scaled * scaled)
            else:  # sigmoid
                sig = 1 / (1 + tl.exp(-alpha * z))
                sg = alpha * sig * (1 - sig)
            if HARD_RESET:
                dv_dh = (h < threshold).to(ACC) - h * sg
            else:
                dv_dh = 1 - threshold * sg
            gh = gv * dv_dh + gs * sg
            grad_x = tl.where(live, gh * inv_tau, 0.0)
            tl.store(grad_x_ptr + at, grad_x.to(grad_x_ptr.dtype.element_ty), mask=cmask & inside)
            gv = tl.where(live, gh * keep, gv)
        tl.debug_barrier()
    tl.store(grad_v0_ptr + row, gv, mask=cmask)


class _LIFTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, neuron, mask, chunk, block):
        batch, length, channels = x.shape
        acc = support.accumulator(x.dtype)
        mdtype = support.state_dtype(x.dtype)
        x = x.contiguous()
        mask_bytes = mask.to(torch.int8).contiguous() if mask is not None else x  # x: never read without a mask
        inv_tau, reset, surrogate = neuron.inv_tau, neuron.reset, neuron.surrogate
        # the reference multiplies by the Python float 1/tau, i.e. by its rounding to the membrane's dtype
        params = torch.tensor([inv_tau, neuron.threshold, neuron.alpha, 1 - inv_tau], dtype=mdtype, device=x.device)
        n_chunks = triton.cdiv(length, chunk)
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        spikes = support.empty(x.shape, x.dtype, x.device)
        v_last = support.empty((batch, channels), mdtype, x.device)
        counts = support.empty((batch, channels), torch.float32, x.device)
        checkpoints = support.empty((batch, n_chunks, channels) if save else (1,), mdtype, x.device)
        v0_arg = v0.contiguous() if v0 is not None else v_last  # not read without HAS_V0
        support.launch(
            _lif_forward_kernel, support.grid(batch, channels, block),
            (x, v0_arg, mask_bytes, params, spikes, v_last, counts, checkpoints, length, channels, n_chunks),
            HAS_V0=v0 is not None, HAS_MASK=mask is not None, HARD_RESET=reset == "hard", ACC=acc, SAVE=save,
            CHUNK=chunk, BLOCK_C=block, enable_fp_fusion=False,
        )  # fmt: skip
        ctx.mark_non_differentiable(counts)
        if save:
            ctx.save_for_backward(x, mask_bytes, params, checkpoints)
            ctx.config = (reset, surrogate, chunk, block, acc, None if v0 is None else v0.dtype, mask is not None)
        return spikes, v_last, counts

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last, _grad_counts):
        x, mask_bytes, params, checkpoints = ctx.saved_tensors
        reset, surrogate, chunk, block, acc, v0_dtype, has_mask = ctx.config
        batch, length, channels = x.shape
        grad_x = support.empty(x.shape, x.dtype, x.device)
        grad_v0 = support.empty((batch, channels), params.dtype, x.device)
        scratch = support.empty((batch, chunk, channels), params.dtype, x.device)
        support.launch(
            _lif_backward_kernel, support.grid(batch, channels, block),
            (
                x, mask_bytes, params, checkpoints, grad_spikes.contiguous(), grad_v_last.contiguous(), grad_x, grad_v0,
                scratch, length, channels, checkpoints.shape[1],
            ),
            HAS_MASK=has_mask, HARD_RESET=reset == "hard", SURROGATE=SURROGATES.index(surrogate), ACC=acc,
            CHUNK=chunk, BLOCK_C=block,
        )  # fmt: skip
        grad_v0 = None if v0_dtype is None else grad_v0.to(v0_dtype)
        return grad_x, grad_v0, None, None, None, None


def lif_triton(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    params: LIFParams = DEFAULT_LIF,
    return_counts: bool = False,
    mask: torch.Tensor | None = None,
    *,
    chunk: int = support.CHUNK,
    block_c: int | None = None,
):
    """Triton LIF: same arguments, results and gradients as ``spikegpt.kernels.lif``.

    ``chunk`` (tokens per checkpoint) and ``block_c`` (channels per program, a power of two) tune the launch.
    """
    check_lif_args(x, v0, params, mask)
    support.check_device(x)
    chunk, block = support.tiling(x.shape[2], chunk, block_c)
    spikes, v_last, counts = _LIFTriton.apply(x, v0, params, mask, chunk, block)
    return (spikes, v_last, counts) if return_counts else (spikes, v_last)
