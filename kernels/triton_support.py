"""What the Triton kernels share: launch checks, tile sizes, accumulation dtypes and output allocation.

Imported only when a Triton kernel runs (``import spikegpt.kernels`` never imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .errors import KernelArgumentError, KernelUnavailableError

# Tokens per chunk: the forward saves the state at every chunk start, the backward recomputes one chunk at a
# time from that checkpoint, and each chunk's loads are unrolled so they are all in flight at once.
CHUNK = 16
MAX_BLOCK_C = 64  # channels per program: many programs even for small B * C; one element per thread


def block_c(channels: int) -> int:
    return min(MAX_BLOCK_C, max(16, triton.next_power_of_2(channels)))


def num_warps(block: int) -> int:
    return max(1, block // 32)


def accumulator(dtype: torch.dtype) -> tl.dtype:
    """In-kernel arithmetic: fp64 for fp64 tensors, fp32 for everything else (half types are only stored)."""
    if dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise KernelArgumentError(f"the Triton kernels take fp64, fp32, fp16 or bf16 tensors, got {dtype}")
    return tl.float64 if dtype == torch.float64 else tl.float32


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_launchable(kernel, tensor: torch.Tensor) -> None:
    """Raise a clear error where Triton cannot run ``kernel`` on ``tensor``'s device."""
    if tensor.is_cuda or isinstance(kernel, InterpretedFunction):
        return
    raise KernelUnavailableError(
        f"the Triton kernels need CUDA tensors (got {tensor.device}); to run them on a CPU through Triton's "
        "interpreter, set TRITON_INTERPRET=1 before spikegpt.kernels loads them"
    )


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests replace it to pre-fill outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)
