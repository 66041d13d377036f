"""How the decoding step runs its products: the weights' layout, and one product module per projection.

Batch-1 decoding reads every weight once per token, so its speed is the bytes of weights it reads. Two things
here decide those bytes:

- **layout** (``prepare_weights``): on a CPU every Linear weight is stored input-major (``W.T`` contiguous, still
  shaped ``[out, in]``), so a batch-1 product streams ``W.T`` row by row at full memory bandwidth (the head of a 50k
  vocabulary: 3.4 ms instead of 8.7 ms on the development machine, REFERENCES.md), and the event-driven products
  read contiguous rows. On CUDA the dense products stay as loaded (cuBLAS reads either layout at full speed); only
  the products that may run event-driven are laid out input-major, for coalesced row loads.
- **products** (``Product``, ``Products``): a projection's ``nn.Linear`` is swapped for a product module (and
  swapped back to restore it) that computes ``x @ W.T`` in one of these modes or their composition:

  ``dense``           the float weights (``F.linear``);
  ``event_driven``    only the weight rows of nonzero inputs (``spikegpt.kernels.sparse_linear``), for inputs
                      with many zeros: in the ``residual`` placement the channel mix's V reads relu(k)², ~60% zeros;
                      in the ``inputs`` placement every product reads spikes;
  ``int8``            the 8-bit codes of a model on the 8-bit grid (``spikegpt.quant.int8``: ``kernels.int8_linear``,
                      spike counts multiplied as they are, real values quantized per row); with ``event_driven``,
                      only the int8 rows of the batch's nonzero inputs (``kernels.int8_sparse_linear``, the same
                      bits);
  ``fake_quantized``  the weights fake-quantized to a grid (quantization-aware training; ``quant.grids``).

  Which modes combine is decided here only (``INCOMPATIBLE``, ``check_combination``); installing a product over
  one already installed composes the two, or raises ``ProductCombinationError`` naming both. No ``forward`` is
  ever patched: a product is a module of its own class, holding the Linear's very parameters.

For the decoding step (``decode_products``): ``decode="dense"`` never reads event-driven, ``"sparse"`` always does
(where a product may), ``"auto"`` does when the input is sparser than the crossover measured on this machine for
this product's shape and batch (``bench/crossover.py`` writes it to ``crossover_path()``; a default stands in when
it is absent), so a batch that fills in falls back to dense. The choice applies to the decoding step only
(``with products:`` around it, or around tracing it); prompts are read with the dense parallel form.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spikegpt.kernels import sparse_linear

from ..errors import ConfigError, DecodeModeError, ProductCombinationError
from ..quant.grids import check_weight_bits, fake_quantize, model_weight_bits, quantized_linears
from ..quant.int8 import Int8Weights, check_int8_model

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "dense", "sparse")
DEFAULT_DECODE = "auto"  # the engine's, and generate()'s
DECODE_HELP = (
    "products of the decoding step: dense (every weight read), sparse (products whose inputs are mostly zero read "
    "only the weight rows of nonzero inputs) or auto (sparse below the crossover bench/crossover.py measured for "
    "this machine and model shape, dense above it)"
)
# The fraction of active inputs below which "auto" reads only the active rows when nothing was measured: below
# the ~35-40% at which a gather of active rows broke even on a CPU (REFERENCES.md, "Spike-driven models"), so an
# unmeasured machine errs towards dense.
DEFAULT_CROSSOVER = 0.3
CROSSOVER_VERSION = 1


def check_decode_mode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise DecodeModeError(f"decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    return mode


def prepare_weights(model: nn.Module, decode: str = "auto") -> None:
    """Lay out the decoding products' weights for ``model``'s device (see the module docstring). Loading, saving
    and optimisers keep working: the weights keep their shapes and values."""
    device = next(model.parameters()).device
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if device.type != "cpu":
        linears = [] if decode == "dense" else sparse_candidates(model)
    for module in linears:
        if not module.weight.t().is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()


def sparse_candidates(model: nn.Module) -> list[nn.Linear]:
    """The products that may run event-driven, as the model's spike layout says (``modeling/layout.py``): every
    block projection where the inputs are spikes, otherwise the channel mixes' V, which reads relu(k)²; never the
    head, which reads ``ln_out``'s dense output. The products, the layout and the benchmarks ask here."""
    return [model.product(product.name) for product in model.layout.products if product.event_driven]


def spike_reading_products(model: nn.Module) -> list[nn.Linear]:
    """The products whose inputs are whole numbers (spikes or spike counts), as the layout says: every block
    projection of the ``inputs`` placement, none of the ``residual`` one. Their int8 form multiplies the counts as
    they are (``spikegpt.quant.int8``)."""
    return [model.product(product.name) for product in model.layout.products if product.reads_spikes]


# -- the crossover file --------------------------------------------------------------------------------------------


def crossover_path() -> Path:
    """``$SPIKEGPT_CROSSOVER`` if set, else ``spikegpt/crossover.json`` in the user's cache directory."""
    if os.environ.get("SPIKEGPT_CROSSOVER"):
        return Path(os.environ["SPIKEGPT_CROSSOVER"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "spikegpt" / "crossover.json"


def machine_id(device: torch.device) -> str:
    """What a crossover measurement is valid for: the processor (or GPU) and, on a CPU, torch's thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{processor}:{os.cpu_count()}cores:{torch.get_num_threads()}threads"


def product_key(dtype: torch.dtype, batch: int, n_in: int, n_out: int) -> str:
    return f"{str(dtype).removeprefix('torch.')}/b{batch}/{n_in}x{n_out}"


@dataclass
class Crossovers:
    """Measured crossover densities of one machine, by ``product_key``; ``default`` for a shape not measured."""

    machine: str
    products: dict[str, float]
    default: float = DEFAULT_CROSSOVER
    source: str = "default"

    def lookup(self, dtype: torch.dtype, batch: int, n_in: int, n_out: int) -> float:
        """The crossover measured for this product (``dtype``: the weights', ``torch.int8`` for an int8 product),
        ``default`` where it was not measured."""
        return self.products.get(product_key(dtype, batch, n_in, n_out), self.default)

    @classmethod
    def load(cls, device: torch.device, path: Path | None = None) -> Crossovers:
        """This machine's entry in the crossover file (``crossover_path()``), or the default when absent."""
        path = path or crossover_path()
        machine = machine_id(device)
        if not path.is_file():
            return cls(machine, {})
        try:
            data = json.loads(path.read_text())
            entry = data["machines"].get(machine) if data.get("version") == CROSSOVER_VERSION else None
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise DecodeModeError(f"{path}: not a crossover file written by bench/crossover.py ({e})") from e
        if entry is None:
            logger.info("%s has no crossover measured for %s; using %.2f", path, machine, DEFAULT_CROSSOVER)
            return cls(machine, {})
        return cls(machine, {k: float(v) for k, v in entry["products"].items()}, source=str(path))

    def save(self, path: Path | None = None) -> Path:
        """Merge this machine's measurements into the crossover file (other machines' entries are kept)."""
        path = path or crossover_path()
        data = {"version": CROSSOVER_VERSION, "machines": {}}
        if path.is_file():
            try:
                old = json.loads(path.read_text())
                if old.get("version") == CROSSOVER_VERSION:
                    data = old
            except ValueError:
                pass
        entry = data["machines"].setdefault(self.machine, {"products": {}})
        entry["products"].update(self.products)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


# -- product modes, and which combine ---------------------------------------------------------------------------

# The pairs of modes that cannot share a product, and why: decided here only (every pair not listed composes).
INCOMPATIBLE = {
    frozenset({"int8", "fake_quantized"}): "int8 products read the 8-bit codes of a model already on the grid, "
    "while fake quantization trains the float weights of a model not yet on it",
    frozenset({"event_driven", "fake_quantized"}): "fake quantization is for training, and an event-driven "
    "product has no gradient",
}


def check_combination(first: str, second: str) -> None:
    """Raise ``ProductCombinationError`` naming both modes unless they can share a product."""
    if first == second:
        raise ProductCombinationError(f"the product is already {first}: a mode applies once", first, second)
    reason = INCOMPATIBLE.get(frozenset((first, second)))
    if reason is not None:
        raise ProductCombinationError(f"{first} and {second} products cannot combine: {reason}", first, second)


@dataclass(frozen=True)
class ProductMode:
    """How one projection computes ``x @ W.T``: the dense product of its float weights, unless modes are set (more
    than one: their composition, where ``check_combination`` allows it).

    event_driven: read only the weight rows of nonzero inputs, in rows with at most this fraction of nonzero inputs
        (the crossover; 1: every row); an int8 product decides by the batch's union of nonzero inputs instead, which
        changes no bits (its event-driven and dense products sum the same integers exactly).
    int8: True: the int8 kernels reading the 8-bit codes of a model on the grid (``spikegpt.quant.int8``).
    fake_quantized: the weights fake-quantized to this many bits, straight-through gradient (training).
    """

    event_driven: float | None = None
    int8: bool = False
    fake_quantized: int | None = None

    def __post_init__(self) -> None:
        for first, second in combinations(self.names, 2):
            check_combination(first, second)

    @property
    def names(self) -> tuple[str, ...]:
        """The modes set, in field order (empty: dense)."""
        # (by identity: an event-driven crossover of 0.0 is a mode set, though 0.0 == False)
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return tuple(name for name, value in values if value is not None and value is not False)

    def __str__(self) -> str:
        return " + ".join(self.names) or "dense"

    def combined(self, other: ProductMode) -> ProductMode:
        """This mode composed with ``other``'s."""
        for first in self.names:
            for second in other.names:
                check_combination(first, second)
        return replace(self, **{name: getattr(other, name) for name in other.names})


DENSE = ProductMode()


class Product(nn.Linear):
    """One projection's product, computed as ``mode`` says, swapped in for the ``nn.Linear`` it stands for.

    It holds that Linear's very parameters under the same names, so state dicts, optimizers and checkpoints see
    nothing change, and it is an ``nn.Linear`` to every reader of the model (quantization, the energy accounting,
    the weights' layout). Int8 and event-driven are decoding modes: a call over several positions per row (a
    prompt read by the parallel form, a scored text) gets the dense product of the float weights, the same
    function. Fake quantization applies to every call (training). ``counts``: the projection reads spike counts
    (``spike_reading_products``), which its int8 form multiplies as they are."""

    def __init__(self, name: str, linear: nn.Linear, mode: ProductMode, counts: bool = False):
        # built on the meta device, then given the Linear's own parameters: nothing is allocated or copied
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.mode = mode
        self.int8 = Int8Weights(name, linear, counts, mode.event_driven) if mode.int8 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode.fake_quantized is not None:
            return F.linear(x, fake_quantize(self.weight, mode.fake_quantized), self.bias)
        if x.dim() == 3 and x.shape[1] > 1:  # several positions per row: not a decoding step
            return F.linear(x, self.weight, self.bias)
        if self.int8 is not None:  # (int8 products are bias-free: Int8Weights checks)
            return self.int8(x, mode.event_driven)
        if mode.event_driven is not None:
            y = sparse_linear(x, self.weight, mode.event_driven)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"


@dataclass
class _Swap:
    name: str
    parent: nn.Module
    attribute: str
    previous: nn.Module
    product: Product


class Products:
    """Product modules for some of a model's projections, by qualified name (``blocks.0.att.key``).

    ``install()`` swaps each projection's module (an ``nn.Linear``, or a product already installed, whose mode the
    new one then composes with) for its product; ``restore()`` swaps back what was there, so leaving one mode
    returns to the one before. ``with products:`` does both, around a decoding step or its tracing. Built once (int8
    weights are packed here, and an impossible combination is refused here, before anything changes), installed as
    often as needed."""

    def __init__(self, model: nn.Module, modes: Mapping[str, ProductMode]):
        self._swaps: list[_Swap] = []
        counts = {id(module) for module in spike_reading_products(model)}
        for name, mode in modes.items():
            if not mode.names:
                continue  # dense: the Linear itself
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            previous = getattr(parent, attribute)
            if not isinstance(previous, nn.Linear):
                raise ConfigError(f"{name} is not a projection (nn.Linear) of the model")
            if isinstance(previous, Product):
                mode = previous.mode.combined(mode)
            product = Product(name, previous, mode, counts=id(previous) in counts)
            self._swaps.append(_Swap(name, parent, attribute, previous, product))

    def __len__(self) -> int:
        return len(self._swaps)

    @property
    def modes(self) -> dict[str, ProductMode]:
        """Each swapped projection's mode (composed with the one it replaces)."""
        return {swap.name: swap.product.mode for swap in self._swaps}

    @property
    def thresholds(self) -> dict[str, float]:
        """The event-driven products' crossovers, by projection."""
        return {name: mode.event_driven for name, mode in self.modes.items() if mode.event_driven is not None}

    def install(self) -> Products:
        for swap in self._swaps:
            if getattr(swap.parent, swap.attribute) is not swap.previous:
                raise ConfigError(f"{swap.name} changed since these products were built; build them again")
        for swap in self._swaps:
            setattr(swap.parent, swap.attribute, swap.product)
        return self

    def restore(self) -> None:
        for swap in reversed(self._swaps):
            setattr(swap.parent, swap.attribute, swap.previous)

    def __enter__(self) -> Products:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


def decode_products(
    model: nn.Module,
    decode: str = "auto",
    batch: int = 1,
    crossovers: Crossovers | None = None,
    int8: bool = False,
) -> Products:
    """The decoding step's products. ``int8``: every projection (the head included) through the int8 kernels (a
    model on the 8-bit grid, on a CPU). ``decode``: ``"dense"``, ``"sparse"`` (every candidate event-driven,
    composed with int8 when both apply) or ``"auto"`` (event-driven below the measured crossover for the
    candidate's shape, weights and ``batch`` rows; a product whose crossover is 0 keeps the plain dense product, as
    the operator's call would only add its own cost)."""
    check_decode_mode(decode)
    modes: dict[str, ProductMode] = {}
    if int8:
        check_int8_model(model)
        modes = {name: ProductMode(int8=True) for name, _ in quantized_linears(model)}
    if decode == "dense":
        return Products(model, modes)
    device = next(model.parameters()).device
    crossovers = crossovers if crossovers is not None else Crossovers.load(device)
    names = {module: name for name, module in model.named_modules()}
    for module in sparse_candidates(model):
        n_out, n_in = module.weight.shape
        dtype = torch.int8 if int8 else module.weight.dtype
        limit = 1.0 if decode == "sparse" else crossovers.lookup(dtype, batch, n_in, n_out)
        if limit > 0:
            name = names[module]
            modes[name] = modes.get(name, DENSE).combined(ProductMode(event_driven=limit))
    return Products(model, modes)


def step_products(
    model: nn.Module, decode: str = DEFAULT_DECODE, batch: int = 1, crossovers: Crossovers | None = None,
    compiled: bool = False,
) -> Products:
    """The products of a decoding step of ``batch`` rows, as the engine and ``generate()`` run it: the weights laid
    out for the device (``prepare_weights``), every projection through the int8 kernels where the model is on the
    8-bit grid on a CPU (unless the step is ``compiled``: torch.compile cannot see inside the compiled kernels), and
    event-driven ones as ``decode`` says (``decode_products``)."""
    device = next(model.parameters()).device
    int8 = not compiled and device.type == "cpu" and model_weight_bits(model) == 8
    prepare_weights(model, decode)
    return decode_products(model, decode, batch, crossovers, int8)


def fake_quantized_products(model: nn.Module, bits: int) -> Products:
    """Quantization-aware training: every product computes with its weights fake-quantized to ``bits`` (straight-
    through gradient), while the parameters, state dict and optimizer keep the float master weights. Install it
    before wrapping the model (DDP, accelerate); ``quantize_model_`` after training puts the weights themselves on
    the grid."""
    check_weight_bits(bits)
    if model_weight_bits(model) is not None:
        raise ConfigError("quantization-aware training starts from a float model, not an already quantized one")
    return Products(model, {name: ProductMode(fake_quantized=bits) for name, _ in quantized_linears(model)})
