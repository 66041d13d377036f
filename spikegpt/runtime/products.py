"""How the decoding step runs its products: the weights' layout, and dense or event-driven products per product.

Batch-1 decoding reads every weight once per token, so its speed is the bytes of weights it reads. Two things
here decide those bytes:

- **layout** (``prepare_weights``): on a CPU every Linear weight is stored input-major (``W.T`` contiguous, still
  shaped ``[out, in]``), so a batch-1 product streams ``W.T`` row by row at full memory bandwidth (the head of a 50k
  vocabulary: 3.4 ms instead of 8.7 ms on the development machine, REFERENCES.md), and the event-driven products
  read contiguous rows. On CUDA the dense products stay as loaded (cuBLAS reads either layout at full speed); only
  the products that may run event-driven are laid out input-major, for coalesced row loads.
- **products** (``DecodeProducts``): a product whose input has many zeros (in the ``residual`` placement the
  channel mix's V reads relu(k)², ~60% zeros; in the ``inputs`` placement every product reads spikes) can read
  only the weight rows of its nonzero inputs (``spikegpt.kernels.sparse_linear``). ``decode="dense"`` never does,
  ``"sparse"`` always does, ``"auto"`` does when the input is sparser than the crossover measured on this machine
  for this product's shape and batch (``bench/crossover.py`` writes it to ``crossover_path()``; a default stands
  in when it is absent), so a batch that fills in falls back to dense.

The choice applies to the decoding step only (``with products:`` around it, or around tracing it); prompts are
read with the dense parallel form.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spikegpt.kernels import sparse_linear

from ..errors import DecodeModeError
from ..modeling.model import ChannelMix

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "dense", "sparse")
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
    """The products whose inputs can be mostly zero: every block's projections in the spike-driven ``inputs``
    placement; in the ``residual`` placement the channel mixes' V, which reads relu(k)². Never the head: it reads
    ``ln_out``'s output, dense in both placements."""
    if getattr(model.config, "spike_placement", "residual") == "inputs":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    return [m.value for m in model.modules() if isinstance(m, ChannelMix)]


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


# -- the products of the decoding step ---------------------------------------------------------------------------


class DecodeProducts:
    """The decoding step's choice of product for each sparse candidate; ``with products:`` applies it.

    ``decode``: ``"dense"`` (every product ``F.linear``), ``"sparse"`` (the candidates always event-driven) or
    ``"auto"`` (event-driven below the measured crossover for the candidate's shape at ``batch`` rows; a product
    whose crossover is 0 keeps the plain dense product, as the operator's call would only add its own cost).
    """

    def __init__(self, model: nn.Module, decode: str, batch: int, crossovers: Crossovers | None = None):
        self.decode = check_decode_mode(decode)
        self.thresholds: dict[nn.Linear, float] = {}
        if decode == "dense":
            return
        device = next(model.parameters()).device
        crossovers = crossovers if crossovers is not None else Crossovers.load(device)
        for module in sparse_candidates(model):
            n_out, n_in = module.weight.shape
            limit = 1.0 if decode == "sparse" else crossovers.lookup(module.weight.dtype, batch, n_in, n_out)
            if limit > 0:
                self.thresholds[module] = limit

    def __enter__(self) -> None:
        for module, limit in self.thresholds.items():
            module.forward = _event_driven(module, limit)

    def __exit__(self, *exc) -> None:
        for module in self.thresholds:
            module.__dict__.pop("forward", None)  # back to the class's dense forward


def _event_driven(module: nn.Linear, limit: float):
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = sparse_linear(x, module.weight, limit)
        return y if module.bias is None else y + module.bias

    return forward
