"""What the Triton kernels share: launch checks, tile sizes, accumulation dtypes and output allocation.

Imported only when a Triton kernel runs (``import spikegpt.kernels`` never imports triton).

Kernels are written as plain functions and handed to ``triton.jit`` at their first launch (``launch``), so
``TRITON_INTERPRET=1`` (Triton's CPU interpreter) takes effect whenever it is set before a launch, not only before
an import. For the same reason they call only Triton's built-in operations (``tl.full``, not ``tl.zeros``, which
is itself a ``@triton.jit`` function, interpreted only if the variable was set before triton was imported).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .errors import KernelArgumentError, KernelUnavailableError

# Tokens per chunk: the forward saves the state at every chunk start, the backward recomputes one chunk at a
# time from that checkpoint, and each chunk's loads are unrolled so they are all in flight at once.
CHUNK = 16
MAX_BLOCK_C = 64  # channels per program: many programs even for small B * C; one element per thread


def tiling(channels: int, chunk: int, block_c: int | None) -> tuple[int, int]:
    """Checked ``(chunk, block_c)`` launch options; ``block_c`` None picks one for ``channels``."""
    block = block_c or min(MAX_BLOCK_C, max(16, triton.next_power_of_2(channels)))
    if block < 1 or block & (block - 1) or chunk < 1:
        raise KernelArgumentError(f"chunk must be >= 1 and block_c a power of two, got chunk={chunk}, block_c={block}")
    return chunk, block


def grid(batch: int, channels: int, block: int) -> tuple[int, int]:
    """One program per (batch row, block of channels)."""
    return batch, triton.cdiv(channels, block)


def num_warps(block: int) -> int:
    return max(1, block // 32)


def accumulator(dtype: torch.dtype) -> tl.dtype:
    """In-kernel arithmetic: fp64 for fp64 tensors, fp32 for everything else (half types are only stored)."""
    if dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise KernelArgumentError(f"the Triton kernels take fp64, fp32, fp16 or bf16 tensors, got {dtype}")
    return tl.float64 if dtype == torch.float64 else tl.float32


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _jitted(fn, interpret: bool):
    return triton.jit(fn)  # triton.jit itself reads TRITON_INTERPRET, which ``interpret`` keys the cache by


def check_device(tensor: torch.Tensor) -> None:
    """Raise a clear error where Triton cannot run on ``tensor``'s device."""
    if not tensor.is_cuda and not interpreting():
        raise KernelUnavailableError(
            f"the Triton kernels need CUDA tensors (got {tensor.device}); to run them on a CPU through Triton's "
            "interpreter, set TRITON_INTERPRET=1"
        )


def launch(fn, grid: tuple[int, ...], args: tuple, **options) -> None:
    """Run kernel ``fn`` over ``grid`` on the device of its first tensor argument: compiled for CUDA (on that
    device, whichever is current), interpreted under ``TRITON_INTERPRET=1``. ``options`` are the kernel's
    constexprs and launch options; ``num_warps`` follows ``BLOCK_C``."""
    tensor = next(a for a in args if isinstance(a, torch.Tensor))
    check_device(tensor)
    kernel = _jitted(fn, interpreting())
    with torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext():
        kernel[grid](*args, num_warps=num_warps(options["BLOCK_C"]), **options)


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests replace it to pre-fill outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)
