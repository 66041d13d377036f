"""The dispatch functions of ``spikegpt.kernels`` (see the package's docstring), the ``spikegpt::sparse_linear``
operator and the 8-bit products' reference operators (``spikegpt::int8_linear``, ``spikegpt::int8_sparse_linear``)."""

from __future__ import annotations

import functools
import os

import torch

from .errors import KernelArgumentError, KernelUnavailableError
from .int8_torch import check_int8_weight, int8_linear_torch
from .lif_torch import DEFAULT_LIF, LIFParams, lif_torch
from .sparse_torch import sparse_linear_torch
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


def _int8_operators(tensor: torch.Tensor):
    """The operators an 8-bit product on ``tensor`` calls: the compiled kernels' (``spikegpt_cpu``) or the
    reference's (``spikegpt``), with the same schemas. A traced step records the call as one node either way."""
    return torch.ops.spikegpt_cpu if _int8_compiled(tensor) else torch.ops.spikegpt


def _int8_rows(x: torch.Tensor, n_in: int, name: str) -> torch.Tensor:
    """x ``[..., in]`` as the operators take it: contiguous fp32, every leading dimension a row. Converted only where
    it must be, so that a traced step records no call that changes nothing (dozens of products a step)."""
    if x.dim() == 0 or x.shape[-1] != n_in:
        raise KernelArgumentError(f"{name} takes x [..., {n_in}], got {list(x.shape)}")
    if x.is_complex():
        raise KernelArgumentError(f"{name} takes real or whole-number x, got {x.dtype}")
    x = x if x.dtype == torch.float32 else x.to(torch.float32)
    return x if x.is_contiguous() else x.contiguous()


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _raise_refused_counts(error: RuntimeError) -> None:
    """Raise the compiled kernels' refusal of the inputs (a ``TORCH_CHECK`` on counts that are not whole numbers,
    or too large) as the reference's typed error; return for any other failure."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if message.startswith("int8 counts products"):
        raise KernelArgumentError(message) from error


def int8_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, counts: bool = False) -> torch.Tensor:
    """x ``[..., in]`` times the 8-bit weight ``codes`` ``[out, in]`` int8 · ``scales`` ``[out]`` → ``[..., out]`` fp32,
    every weight read. ``counts``: x holds spike counts (whole numbers), used as they are; otherwise each row of x is
    quantized to int8 with its own scale. Definition: ``int8_torch``."""
    check_int8_weight(codes, scales, input_major=False)
    rows = _int8_rows(x, codes.shape[1], "int8_linear")
    try:
        return _int8_operators(rows).int8_linear.default(rows, _contiguous(codes), _contiguous(scales), counts)
    except RuntimeError as error:
        _raise_refused_counts(error)
        raise


def int8_sparse_linear(
    x: torch.Tensor,
    codes_t: torch.Tensor,
    scales: torch.Tensor,
    counts: bool = False,
    max_density: float = 1.0,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The event-driven ``int8_linear``: the 8-bit weight stored input-major (``codes_t`` ``[in, out]``), only the
    weight rows of the inputs nonzero in some row of the batch read (after quantization, for real-valued rows), each
    once for the whole batch; the result equals ``int8_linear``'s to the bit, since both sum exactly.

    ``max_density`` is the crossover: where the batch's fraction of active inputs exceeds it and the output-major
    ``codes`` ``[out, in]`` are given, the dense kernel runs instead (the same bits, so the choice never changes a
    row's result). Decided inside the call: a traced step keeps it data-dependent. On CUDA, spike counts run the
    Triton kernel (``sparse_triton.int8_counts_linear_triton``)."""
    check_int8_weight(codes_t, scales, input_major=True)
    if codes is not None:
        check_int8_weight(codes, scales, input_major=False)
    rows = _int8_rows(x, codes_t.shape[0], "int8_sparse_linear")
    if counts and kernel_backend(rows) == "triton":
        from .int8_torch import check_counts
        from .sparse_triton import int8_counts_linear_triton

        flat = rows.reshape(-1, rows.shape[-1])
        check_counts(flat)
        return int8_counts_linear_triton(flat, codes_t, scales).reshape(*x.shape[:-1], codes_t.shape[1])
    dense = None if codes is None else _contiguous(codes)
    try:
        return _int8_operators(rows).int8_sparse_linear.default(
            rows, _contiguous(codes_t), _contiguous(scales), counts, max_density, dense
        )
    except RuntimeError as error:
        _raise_refused_counts(error)
        raise


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


# The reference as operators (``spikegpt::int8_linear``, ``spikegpt::int8_sparse_linear``), with the compiled
# kernels' schemas (``csrc/int8_cpu.cpp``): where those cannot be built, a traced step records these instead.
def _int8_linear_reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, counts: bool) -> torch.Tensor:
    y = int8_linear_torch(x.reshape(-1, x.shape[-1]), codes, scales, counts)
    return y.reshape(*x.shape[:-1], codes.shape[0])


def _int8_sparse_linear_reference(
    x: torch.Tensor,
    codes_t: torch.Tensor,
    scales: torch.Tensor,
    counts: bool,
    max_density: float,
    codes: torch.Tensor | None,
) -> torch.Tensor:
    # reading every row or only the active ones: the same function
    return _int8_linear_reference(x, codes_t.t(), scales, counts)


def _int8_linear_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, counts: bool) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], codes.shape[0]), dtype=torch.float32)


def _int8_sparse_linear_shape(x, codes_t, scales, counts, max_density, codes) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], codes_t.shape[1]), dtype=torch.float32)


_LIBRARY.define("int8_linear(Tensor x, Tensor codes, Tensor scales, bool counts) -> Tensor")
_LIBRARY.impl("int8_linear", _int8_linear_reference, "CompositeExplicitAutograd")
torch.library.register_fake("spikegpt::int8_linear", _int8_linear_shape, lib=_LIBRARY)
_LIBRARY.define(
    "int8_sparse_linear(Tensor x, Tensor codes_t, Tensor scales, bool counts, float max_density, Tensor? codes) "
    "-> Tensor"
)
_LIBRARY.impl("int8_sparse_linear", _int8_sparse_linear_reference, "CompositeExplicitAutograd")
torch.library.register_fake("spikegpt::int8_sparse_linear", _int8_sparse_linear_shape, lib=_LIBRARY)
