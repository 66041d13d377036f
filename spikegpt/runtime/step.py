"""The recurrent decoding step recorded with ``torch.jit.trace``: the engine's step on a CPU, and ``generate()``'s.

TorchScript runs the very same operations as the model's forward (bit for bit), without the Python interpreter
between its hundreds of small operations, which is most of a small model's decoding time on a CPU.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch

from spikegpt.kernels import kernel_backend

from ..modeling.state import RecurrentState

if TYPE_CHECKING:
    from ..modeling.model import SpikeGPTForCausalLM
    from .products import Products


class _DecodeStep(torch.nn.Module):
    def __init__(self, model: SpikeGPTForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(tokens, state=RecurrentState(*state), output_spike_stats=True)
        return (out.logits[:, -1], out.spike_stats.counts, out.spike_stats.reads, *out.state.tensors())


@contextmanager
def _transformers_logs_silenced():
    """Tracing also reads ``loss_function`` of the inner ``SpikeGPTModel``, which has no loss (the head's forward
    computes it) and for which transformers would log "`loss_type=None` was set in the config but it is
    unrecognized": nothing a user can act on."""
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logger.setLevel(level)


def trace_decode_step(
    model: SpikeGPTForCausalLM, tokens: torch.Tensor, state: RecurrentState, products: Products | None = None
):
    """One recurrent step at a fixed batch shape (``tokens`` ``[B, 1]``), recorded with ``torch.jit.trace``: a
    function ``(tokens, state) -> (last logits [B, vocab], new state, (spike counts [B, sites], projection reads
    [B, projections, 2]))`` that runs the very
    same operations as the model's forward, without the Python interpreter between them. Only for the torch
    kernels (a Triton launch cannot be traced) and only for the traced shape.

    TorchScript is deprecated in favour of torch.compile, which fuses more but takes a minute to compile on a small
    CPU (``compile=True``); ``torch.export`` runs slower than eager here. Tracing takes a fraction of a second and
    doubles the decoding speed of a small model, so it stays while the pinned torch has it.

    ``products``: the product modules to record (``spikegpt.runtime.products``: dense, event-driven, int8). An
    event-driven product is an operator (``spikegpt::sparse_linear``, ``spikegpt::int8_sparse_linear``), which the
    trace records as one call with a fixed output shape; which weight rows it reads, and whether it falls back to
    dense, is decided inside the call at every step."""
    with torch.no_grad(), warnings.catch_warnings(), _transformers_logs_silenced(), products or nullcontext():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        warnings.simplefilter("ignore", DeprecationWarning)
        # tracing reads every attribute of every module, deprecated properties of PreTrainedModel included
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        traced = torch.jit.trace(_DecodeStep(model), (tokens, *state.tensors()), check_trace=False)

    def step(tokens: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState, tuple]:
        logits, counts, reads, *tensors = traced(tokens, *state.tensors())
        return logits, RecurrentState(*tensors), (counts, reads)

    step.traced = traced  # the recorded graph, for inspection
    return step


# per model, its traced steps by (batch, device, dtype); a weak reference, so a step never keeps its model alive
_GENERATE_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def generate_step(model: SpikeGPTForCausalLM, tokens: torch.Tensor, state: RecurrentState):
    """The traced step for ``generate()``'s one-token forwards, traced at the first call for that batch size, or
    None where tracing cannot serve (Triton kernels, autograd, training mode)."""
    if model.training or torch.is_grad_enabled() or kernel_backend(tokens) != "torch":
        return None
    steps = _GENERATE_STEPS.setdefault(model, {})
    key = (tokens.shape[0], tokens.device, model.head.weight.dtype)
    if key not in steps:
        steps[key] = trace_decode_step(model, tokens, state)
    return steps[key]
