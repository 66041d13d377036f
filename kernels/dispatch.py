"""The dispatch functions of ``spikegpt.kernels`` (see the package's docstring) and the ``spikegpt::sparse_linear``
and ``spikegpt::int8_sparse_linear`` operators."""

from __future__ import annotations

import functools
import os

import torch

from .errors import KernelArgumentError, KernelUnavailableError
from .int8_torch import check_int8_weight, int8_counts_linear_torch, int8_linear_torch
from .lif_torch import DEFAULT_LIF, LIFParams, lif_torch
from .sparse_torch import int8_sparse_linear_torch, sparse_linear_torch
from .wkv_torch import State, wkv_torch

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _configured_backend() -> str:
    """``SPIKEGPT_KERNELS``, checked, read once (an invalid value raises, and is read again on the next call)."""
    choice = os.environ.get("SPIKEGPT_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise KernelUnavailableError(f"SPIKEGPT_KERNELS must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "triton" and not _triton_importable():
        raise KernelUnavailableError(
            "SPIKEGPT_KERNELS=triton, but the triton package cannot be imported; install triton or set "
            "SPIKEGPT_KERNELS=torch"
        )
    return choice


def reload_kernel_backend() -> None:
    """Read ``SPIKEGPT_KERNELS`` again at the next dispatch (after changing it in a running process)."""
    _configured_backend.cache_clear()


def kernel_backend(tensor: torch.Tensor, steps: int | None = None) -> str:
    """Which implementation runs for ``tensor``: ``"triton"`` or ``"torch"``. ``steps``: tokens along the time axis
    of a WKV or LIF call (1 = a decoding step, which ``auto`` gives to the reference on every device)."""
    choice = _configured_backend()
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if tensor.is_cuda and steps != 1 and _triton_importable() else "torch"
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
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """WKV over k, v ``[B, T, C]`` with decay ``w = -exp(time_decay)`` and bonus ``u = time_first`` (both ``[C]``).

    ``state`` is ``(num, den, max)``, three fp32 ``[B, C]`` tensors, or None for a fresh sequence. ``mask``
    ``[B, T]`` bool marks the real tokens (None: all): a padded position outputs 0 and leaves the state as it was.
    Returns ``(y [B, T, C], new_state)``; differentiable in w, u, k, v and the incoming state.
    """
    if kernel_backend(k, k.shape[1] if k.dim() == 3 else None) == "triton":
        from .wkv_triton import wkv_triton

        return wkv_triton(w, u, k, v, state, mask)
    return wkv_torch(w, u, k, v, state, mask)


def lif(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    params: LIFParams = DEFAULT_LIF,
    return_counts: bool = False,
    mask: torch.Tensor | None = None,
):
    """Multi-step LIF over x ``[B, T, C]`` from membrane ``v0`` ``[B, C]`` (None: zero), with the neurons'
    settings ``params``. ``mask`` ``[B, T]`` bool marks the real tokens (None: all): at a padded position nothing
    fires and the membrane stays as it was.

    Returns ``(spikes, v_last)``, or ``(spikes, v_last, counts)`` with ``return_counts``, where ``counts``
    ``[B, C]`` (fp32) is the number of spikes per channel, so spike statistics need no second pass.
    """
    if kernel_backend(x, x.shape[1] if x.dim() == 3 else None) == "triton":
        from .lif_triton import lif_triton

        return lif_triton(x, v0, params, return_counts, mask)
    return lif_torch(x, v0, params, return_counts, mask)


def _int8_compiled(tensor: torch.Tensor) -> bool:
    """Whether an 8-bit product on ``tensor`` runs the compiled CPU kernel (``int8_cpu``) rather than the reference:
    on CPU tensors unless ``SPIKEGPT_KERNELS=torch``, where it can be built."""
    if tensor.device.type != "cpu" or _configured_backend() == "torch":
        return False
    from . import int8_cpu

    return int8_cpu.available()


def int8_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Real-valued x ``[..., in]`` fp32 times the 8-bit weight ``codes`` ``[out, in]`` int8 · ``scales`` ``[out]``
    → ``[..., out]`` fp32, each row of x quantized to int8 with its own scale (definition: ``int8_torch``)."""
    flat = x.reshape(-1, x.shape[-1])
    check_int8_weight(codes, scales, input_major=False)
    if flat.dtype != torch.float32 or flat.shape[1] != codes.shape[1]:
        raise KernelArgumentError(f"int8_linear takes fp32 x [..., {codes.shape[1]}], got {x.dtype} {list(x.shape)}")
    if _int8_compiled(flat):
        y = torch.ops.spikegpt_cpu.int8_linear(flat.contiguous(), codes.contiguous(), scales.contiguous())
    else:
        y = int8_linear_torch(flat, codes, scales)
    return y.reshape(*x.shape[:-1], codes.shape[0])


def int8_counts_linear(counts: torch.Tensor, codes_t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Spike counts ``[..., in]`` (whole numbers) times the 8-bit weight stored input-major, ``codes_t`` ``[in, out]``
    int8 · ``scales`` ``[out]`` → ``[..., out]`` fp32, reading only the weight rows of the batch's nonzero inputs
    (event-driven); the result equals the dense product to the bit (definition: ``int8_torch``)."""
    flat = counts.reshape(-1, counts.shape[-1])
    check_int8_weight(codes_t, scales, input_major=True)
    if flat.shape[1] != codes_t.shape[0]:
        expected = codes_t.shape[0]
        raise KernelArgumentError(f"int8_counts_linear takes counts [..., {expected}], got {list(counts.shape)}")
    if kernel_backend(flat) == "triton":
        from .sparse_triton import int8_counts_linear_triton

        y = int8_counts_linear_triton(flat, codes_t, scales)
    elif _int8_compiled(flat):
        values = flat.to(torch.float32).contiguous()
        try:
            y = torch.ops.spikegpt_cpu.int8_counts_linear(values, codes_t.contiguous(), scales.contiguous())
        except RuntimeError as error:
            raise KernelArgumentError(str(error).splitlines()[0]) from error
    else:
        if flat.is_floating_point() and not bool((flat == flat.round()).all()):
            raise KernelArgumentError("int8 counts products take whole-number inputs (spike counts)")
        y = int8_counts_linear_torch(flat, codes_t, scales)
    return y.reshape(*counts.shape[:-1], codes_t.shape[1])


# The operator ``spikegpt::sparse_linear``: ``torch.jit.trace`` records a call to it as one node with a fixed output
# shape, so a traced decoding step keeps its data-dependent sparsity inside the call (torch.compile sees it as one
# opaque call too, through the shape function below). Registered with a plain ``torch.library.Library``, whose
# calls cost less than ``torch.library.custom_op``'s wrapper: it runs dozens of times per decoded token.
def sparse_linear(x: torch.Tensor, weight: torch.Tensor, max_density: float = 1.0) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) for x ``[..., in]`` with many zeros (floating, or integer spike counts),
    reading only the weight rows of nonzero inputs; for inference (it has no gradient).

    ``max_density`` is the crossover: inputs denser than it are multiplied densely, because then the dense product
    is faster. On a CPU each row decides for itself by its own fraction of nonzero inputs (a row's result never
    depends on the other rows); in Triton, which reads each active weight row once for the whole batch, the batch
    decides by the fraction of inputs active in any row (the union). 1 (the default): always event-driven; 0:
    dense unless the inputs are all zero.

    Results equal the dense product up to summation order (for binary inputs and small integer counts every
    product term is exact, so only the order of the additions differs). The weight is best stored input-major
    (``weight.t()`` contiguous), as the engine lays out the decoding products; an output-major one works too.
    """
    return torch.ops.spikegpt.sparse_linear.default(x, weight, max_density)


def _sparse_linear(x: torch.Tensor, weight: torch.Tensor, max_density: float = 1.0) -> torch.Tensor:
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise KernelArgumentError(
            f"sparse_linear takes x [..., in] and weight [out, in], got {list(x.shape)} and {list(weight.shape)}"
        )
    if x.is_floating_point() and x.dtype != weight.dtype:
        raise KernelArgumentError(f"x and weight must share a dtype, got {x.dtype} and {weight.dtype}")
    flat = x.reshape(-1, x.shape[-1])
    if kernel_backend(flat) == "triton":
        from .sparse_triton import active_union, sparse_linear_triton

        union = active_union(flat)
        if max_density < 1.0 and bool(union[1] > max_density * flat.shape[1]):  # a host read: the batch decides
            y = torch.nn.functional.linear(flat.to(weight.dtype), weight)
        else:
            y = sparse_linear_triton(flat, weight, union)
    else:
        y = sparse_linear_torch(flat, weight, max_density)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _sparse_linear_shape(x: torch.Tensor, weight: torch.Tensor, max_density: float = 1.0) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=weight.dtype)


_LIBRARY = torch.library.Library("spikegpt", "DEF")
_LIBRARY.define("sparse_linear(Tensor x, Tensor weight, float max_density=1.0) -> Tensor")
_LIBRARY.impl("sparse_linear", _sparse_linear, "CompositeExplicitAutograd")
torch.library.register_fake("spikegpt::sparse_linear", _sparse_linear_shape, lib=_LIBRARY)


def int8_sparse_linear(
    x: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor, max_density: float = 1.0, quantize_input: bool = True
) -> torch.Tensor:
    """The event-driven product over 8-bit weights on a CPU: ``x`` ``[..., in]`` (float32) times the int8 codes
    ``codes_t`` ``[in, out]`` (input-major) scaled by ``scale`` ``[out]``, reading only the int8 rows of nonzero
    inputs; for inference. ``quantize_input``: the dynamic int8 kernel's arithmetic (inputs quantized per row),
    else the weight-only kernel's (float32 inputs). Definition and row-by-row decision:
    ``sparse_torch.int8_sparse_linear_torch``. An operator, like ``sparse_linear``, so a traced step keeps the
    data-dependent choice inside the call."""
    return torch.ops.spikegpt.int8_sparse_linear.default(x, codes_t, scale, max_density, quantize_input)


def _int8_sparse_linear(
    x: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor, max_density: float = 1.0, quantize_input: bool = True
) -> torch.Tensor:
    if codes_t.dim() != 2 or codes_t.dtype != torch.int8 or x.shape[-1] != codes_t.shape[0]:
        raise KernelArgumentError(
            f"int8_sparse_linear takes x [..., in] and int8 codes [in, out], got {list(x.shape)} and "
            f"{list(codes_t.shape)} {codes_t.dtype}"
        )
    if scale.shape != (codes_t.shape[1],) or x.device.type != "cpu":
        raise KernelArgumentError(
            f"int8_sparse_linear takes CPU tensors and one scale per output, got {list(scale.shape)} on {x.device}"
        )
    y = int8_sparse_linear_torch(x.reshape(-1, x.shape[-1]), codes_t, scale, max_density, quantize_input)
    return y.reshape(*x.shape[:-1], codes_t.shape[1])


def _int8_sparse_linear_shape(
    x: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor, max_density: float = 1.0, quantize_input: bool = True
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], codes_t.shape[1]), dtype=torch.float32)


_LIBRARY.define(
    "int8_sparse_linear(Tensor x, Tensor codes_t, Tensor scale, float max_density=1.0, bool quantize_input=True) "
    "-> Tensor"
)
_LIBRARY.impl("int8_sparse_linear", _int8_sparse_linear, "CompositeExplicitAutograd")
torch.library.register_fake("spikegpt::int8_sparse_linear", _int8_sparse_linear_shape, lib=_LIBRARY)
