"""Loading a model and its tokenizer from a Hugging Face directory or Hub id, strictly, with errors a user can act on.

Strict means no half-loaded model is ever returned: the device must be available, the configuration must be valid
(every real-valued field a finite number) and its weights must fit in the memory the device has (estimated from the
configuration before any tensor is allocated), every tensor of the model must come from the checkpoint with its
shape, stored as floating point where the model's is, and hold finite values only (one pass over the weights), and
every tensor of the checkpoint must be used; otherwise a ``CheckpointError`` (or ``DeviceError``) names what is
wrong.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from ..errors import CheckpointError, ConfigError, DeviceError, SpikeGPTError, TokenizerError
from ..modeling.config import SpikeGPTConfig
from ..modeling.model import SpikeGPTForCausalLM
from ..quant.grids import quantize_model_
from ..threads import apply_threads
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


ASSETS = Path(__file__).parent.parent / "assets"
# the first is the default; the third is the non-spiking twin of the others (the frontier's reference and teacher)
BUNDLED_MODELS = (
    "spikegpt-shakespeare",
    "spikegpt-shakespeare-driven",
    "spikegpt-shakespeare-twin",
    "spikegpt-shakespeare-driven-k4",
)


def default_model_path() -> Path:
    """Directory of the small SpikeGPT bundled with the package (trained on Tiny Shakespeare)."""
    return ASSETS / BUNDLED_MODELS[0]


def bundled_model_path(name: str) -> Path:
    """Directory of a model bundled with the package, by name (``BUNDLED_MODELS``), so ``--model NAME`` works
    from any directory: ``spikegpt-shakespeare`` (the default), ``spikegpt-shakespeare-driven`` (spike-driven:
    every projection reads sparse signed spikes, the frontier's shipped model), ``spikegpt-shakespeare-twin`` (the
    same recipe with spiking off: the non-spiking reference) or ``spikegpt-shakespeare-driven-k4`` (the earlier
    spike-driven model: spike counts up to 4, about half of them zero)."""
    if name not in BUNDLED_MODELS:
        raise CheckpointError(f"no bundled model {name!r}; the bundled models are {', '.join(BUNDLED_MODELS)}")
    return ASSETS / name


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists() or source.count("/") > 1


def _check_local(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config}: not valid JSON ({e})") from e
    if model_type != "spikegpt":
        raise CheckpointError(f"{path}: holds a {model_type!r} model, not a SpikeGPT (model_type 'spikegpt')")


def saved_files(model: SpikeGPTForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path) -> dict[str, bytes]:
    """Every file a checkpoint of ``model`` and ``tokenizer`` consists of, as saving writes them (into the empty
    ``directory``): name → contents."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {item.name: item.read_bytes() for item in sorted(directory.iterdir())}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(name: str) -> torch.device:
    """The torch device ``name``, if this machine has it; DeviceError otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r}: {str(e).splitlines()[0]}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceError(f"the device {name!r} is not available: {why} (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"the device {name!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"the device {name!r} is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"the device {name!r} is not supported; use cpu or cuda")
    return device


def parameter_count(config: SpikeGPTConfig) -> int:
    """The model's number of parameters, without building it: one- and two-block models on the meta device (which
    allocates nothing) give the part outside the blocks and one block's share (block 0 may differ: ffn_pre)."""
    counts = []
    for n_layer in (1, 2):
        with torch.device("meta"):
            model = SpikeGPTForCausalLM(SpikeGPTConfig(**{**config.to_dict(), "n_layer": n_layer}))
        counts.append(sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
    first, second = counts
    return first + (config.n_layer - 1) * (second - first)


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still give (a CPU: the system's MemAvailable), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_bytes(config: SpikeGPTConfig, dtype: torch.dtype) -> int:
    """The estimated bytes of the weights of a model of ``config`` in ``dtype``."""
    return parameter_count(config) * torch.empty((), dtype=dtype, device="meta").element_size()


def check_memory(config: SpikeGPTConfig, dtype: torch.dtype, device: torch.device, source: str) -> int:
    """The estimated bytes of the model's weights; CheckpointError when they exceed what ``device`` has."""
    params = parameter_count(config)
    needed = weight_bytes(config, dtype)
    available = available_memory(device)
    if available is not None and needed > available:
        raise CheckpointError(
            f"{source}: the model needs about {needed / 2**30:.1f} GiB for its {params:,} parameters in "
            f"{str(dtype).removeprefix('torch.')} (n_layer {config.n_layer}, n_embd {config.n_embd}, vocab_size "
            f"{config.vocab_size}), more than the {available / 2**30:.1f} GiB available on {device}"
        )
    return needed


def check_memory_together(needs: dict[str, int], device: str) -> None:
    """CheckpointError when models that are to share one process (``needs``: name → estimated bytes each) do not fit
    together in the memory ``device`` has; each alone is checked again as it loads (``check_memory``)."""
    available = available_memory(check_device(device))
    total = sum(needs.values())
    if available is not None and total > available:
        each = ", ".join(f"{name} {needed / 2**30:.2f}" for name, needed in needs.items())
        raise CheckpointError(
            f"the {len(needs)} models together need about {total / 2**30:.2f} GiB ({each} GiB: weights and state "
            f"cache bounds), more than the {available / 2**30:.2f} GiB available on {device}; serve fewer models, "
            "or lower --state-cache-mb"
        )


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _check_loading(info: dict, source: str) -> None:
    """CheckpointError naming the tensors transformers could not load one for one (it would initialise them)."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing {_names(info['missing_keys'])}")
    if info["unexpected_keys"]:
        problems.append(f"unexpected {_names(info['unexpected_keys'])}")
    if info["mismatched_keys"]:
        shapes = [
            f"{k} ({tuple(saved)} where the model has {tuple(wanted)})" for k, saved, wanted in info["mismatched_keys"]
        ]
        problems.append(f"mis-shaped {_names(shapes)}")
    if info.get("error_msgs"):
        problems.append(str(info["error_msgs"][0]).splitlines()[0])
    if problems:
        raise CheckpointError(f"{source}: the checkpoint does not match its config: {'; '.join(problems)}")


def read_config(source: str) -> SpikeGPTConfig:
    """The configuration of the checkpoint at ``source``; an invalid one is a CheckpointError naming its field."""
    try:
        return SpikeGPTConfig.from_pretrained(source)
    except ConfigError as e:
        raise CheckpointError(f"{source}: config.json: {e}", e.field) from e


# the files ``from_pretrained`` reads the weights from, in its order of preference (an index lists the shards)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def weight_files(source: str) -> list[Path]:
    """The files the weights of ``source`` were loaded from: in the local directory, or in the Hub cache that
    loading filled (nothing is downloaded here)."""
    for name in WEIGHT_FILES:
        if Path(source).is_dir():
            found = Path(source) / name if (Path(source) / name).is_file() else None
        else:
            cached = try_to_load_from_cache(source, name)
            found = Path(cached) if isinstance(cached, str) else None
        if found is None:
            continue
        if name.endswith(".index.json"):
            shards = json.loads(found.read_text())["weight_map"].values()
            return [found.parent / shard for shard in sorted(set(shards))]
        return [found]
    return []


def stored_dtypes(files: list[Path]) -> dict[str, tuple[str, bool]]:
    """Tensor name → (its dtype as stored, whether that is floating point), from the files' headers: safetensors
    dtypes ("F32", "BF16", "I32", ...) without reading the data, pickled ones as torch dtypes on the meta device."""
    stored = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as tensors:
                for name in tensors.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    kind = tensors.get_slice(name).get_dtype()
                    stored[name] = (kind, kind == "BF16" or kind.startswith("F"))  # F64 ... F8_E4M3, and BF16
        else:
            for name, tensor in torch.load(file, map_location="meta", weights_only=True).items():
                stored[name] = (str(tensor.dtype).removeprefix("torch."), tensor.is_floating_point())
    return stored


def _check_weights(model: SpikeGPTForCausalLM, files: list[Path], source: str) -> None:
    """CheckpointError naming the first tensor the model holds as floating point that the checkpoint stores as
    another kind (loading would have cast integers into weights silently), or that holds NaN or infinity: one
    pass over the weights, before anything computes with them."""
    stored = stored_dtypes(files)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        kind, is_float = stored.get(name, (None, True))
        if not is_float:
            raise CheckpointError(f"{source}: {name} is stored as {kind}, not as floating point weights", name)
        if not torch.isfinite(tensor).all():
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            raise CheckpointError(
                f"{source}: {name} holds values that are not finite numbers ({nan:,} NaN and {inf:,} infinite of "
                f"{tensor.numel():,})",
                name,
            )


def _adopt_pad_token(model: SpikeGPTForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """A checkpoint saved before tokenizers had a pad token: its config and generation config take the one its
    tokenizer has now (``load_tokenizer``), so that ``generate()`` pads batches without asking."""
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def resolve_source(source: str | Path | None) -> str:
    """Where the model ``source`` names is read from: the bundled model for None or a bundled model's name, a
    checked local directory, else a Hub id."""
    source = str(source) if source is not None else str(default_model_path())
    if source in BUNDLED_MODELS and not Path(source).exists():
        source = str(bundled_model_path(source))
    if _looks_local(source):
        _check_local(Path(source).expanduser())
        source = str(Path(source).expanduser())
    return source


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    return (parse_dtype(dtype) if isinstance(dtype, str) or dtype is None else dtype) or torch.float32


def estimated_weight_bytes(source: str | Path | None, dtype: str | torch.dtype | None = None) -> int:
    """The estimated bytes of the weights of the model at ``source`` (as ``load_model`` names it) in ``dtype``,
    from its configuration alone: nothing is loaded."""
    return weight_bytes(read_config(resolve_source(source)), _torch_dtype(dtype))


def load_model(
    source: str | Path | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    weight_bits: int | None = None,
    threads: int | None = None,
) -> tuple[SpikeGPTForCausalLM, PreTrainedTokenizerFast]:
    """The model and tokenizer at ``source`` (a directory or Hub id; None: the bundled model), in eval mode;
    ``weight_bits`` quantizes its product weights after loading (``spikegpt.quant.grids``). ``threads`` sets torch's
    CPU thread count for the process first (``spikegpt.threads``; None keeps a count already set there, else decides
    by its policy)."""
    apply_threads(threads)
    target = check_device(device)
    source = resolve_source(source)
    torch_dtype = _torch_dtype(dtype)
    try:
        config = read_config(source)
        check_memory(config, torch_dtype, target, source)
        model, info = SpikeGPTForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except SpikeGPTError:
        raise
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load a SpikeGPT model from {source}: {first_line}") from e
    _check_loading(info, source)
    _check_weights(model, weight_files(source), source)
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as e:
        raise CheckpointError(f"{source}: the model has no usable tokenizer ({e})") from e
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}"
        )
    _adopt_pad_token(model, tokenizer)
    if weight_bits is not None:
        quantize_model_(model, weight_bits)
    return model.to(target).eval(), tokenizer
