"""The recurrent decoding step recorded with ``torch.jit.trace``: the engine's step on a CPU, and ``generate()``'s.

TorchScript runs the very same operations as the model's forward (bit for bit), without the Python interpreter
between its hundreds of small operations, which is most of a small model's decoding time on a CPU.

``generate()`` runs the engine's step (``generate_step``), laid out as the engine lays it out
(``products.step_products``) and without the spike statistics it has no use for. A model on the 8-bit grid decodes,
on a CPU, with the engine's int8 products (event-driven where ``decode="auto"`` chooses: the same bits as the dense
int8 products), a quarter of the bytes per token; a float model with dense products, its forward's bits.
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
from ..quant.grids import model_weight_bits
from .products import DEFAULT_DECODE, Products, step_products

if TYPE_CHECKING:
    from ..modeling.model import SpikeGPTForCausalLM


class _DecodeStep(torch.nn.Module):
    def __init__(self, model: SpikeGPTForCausalLM, stats: bool):
        super().__init__()
        self.model = model
        self.stats = stats

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(tokens, state=RecurrentState(*state), output_spike_stats=self.stats)
        stats = (out.spike_stats.counts, out.spike_stats.reads) if self.stats else ()
        return (out.logits[:, -1], *stats, *out.state.tensors())


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
    model: SpikeGPTForCausalLM,
    tokens: torch.Tensor,
    state: RecurrentState,
    products: Products | None = None,
    stats: bool = True,
):
    """One recurrent step at a fixed batch shape (``tokens`` ``[B, 1]``), recorded with ``torch.jit.trace``: a
    function ``(tokens, state) -> (last logits [B, vocab], new state, (spike counts [B, sites], projection reads
    [B, projections, 2]))`` (``stats`` False: None instead of the statistics) that runs the very
    same operations as the model's forward, without the Python interpreter between them. Only for the torch
    kernels (a Triton launch cannot be traced) and only for the traced shape.

    TorchScript is deprecated in favour of torch.compile, which fuses more but takes a minute to compile on a small
    CPU (``compile=True``); ``torch.export`` runs slower than eager here. Tracing takes a fraction of a second and
    doubles the decoding speed of a small model, so it stays while the pinned torch has it.

    ``products``: the product modules to record (``spikegpt.runtime.products``: dense, event-driven, int8). An
    product is an operator (``spikegpt::sparse_linear``; the int8 ones ``spikegpt_cpu::int8_linear`` and
    ``spikegpt_cpu::int8_sparse_linear``, or their reference ``spikegpt::`` twins where the compiled kernels cannot
    be built), which the trace records as one call with a fixed output shape; which weight rows it reads, and
    whether it falls back to dense, is decided inside the call at every step."""
    with torch.no_grad(), warnings.catch_warnings(), _transformers_logs_silenced(), products or nullcontext():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        warnings.simplefilter("ignore", DeprecationWarning)
        # tracing reads every attribute of every module, deprecated properties of PreTrainedModel included
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        traced = torch.jit.trace(_DecodeStep(model, stats), (tokens, *state.tensors()), check_trace=False)
    n_stats = 2 if stats else 0

    def step(tokens: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState, tuple | None]:
        with torch.no_grad():  # recorded without gradients (no detach() recorded): run without them
            logits, *out = traced(tokens, *state.tensors())
        return logits, RecurrentState(*out[n_stats:]), tuple(out[:n_stats]) if stats else None

    step.traced = traced  # the recorded graph, for inspection
    return step


# per model, (the version of its weights, its traced steps by (batch, device, dtype, bits)); a weak reference, so a
# step never keeps its model alive
_GENERATE_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_version(model: SpikeGPTForCausalLM) -> int:
    """Changes with any in-place change of a parameter (``load_state_dict``, an optimizer step): an 8-bit step holds
    int8 codes made from the weights when it was traced, which such a change leaves behind."""
    return sum(p._version for p in model.parameters())


def generate_step(model: SpikeGPTForCausalLM, tokens: torch.Tensor, state: RecurrentState):
    """The traced step for ``generate()``'s one-token forwards (see the module docstring), traced at the first call
    for that batch size, or None where tracing cannot serve (Triton kernels, autograd, training mode)."""
    if model.training or torch.is_grad_enabled() or kernel_backend(tokens) != "torch":
        return None
    version, steps = _GENERATE_STEPS.get(model, (None, {}))
    if version != _weights_version(model):  # traced from other weights: traced again
        steps = {}
    batch = tokens.shape[0]
    key = (batch, tokens.device, model.head.weight.dtype, model_weight_bits(model))
    if key not in steps:
        int8 = model_weight_bits(model) == 8 and tokens.device.type == "cpu"
        products = step_products(model, DEFAULT_DECODE if int8 else "dense", batch)
        steps[key] = trace_decode_step(model, tokens, state, products, stats=False)
        _GENERATE_STEPS[model] = (_weights_version(model), steps)  # (after laying out the weights)
    return steps[key]
