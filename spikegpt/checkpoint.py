"""Loading a model and its tokenizer from a Hugging Face directory or Hub id, with errors a user can act on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from .errors import CheckpointError, TokenizerError
from .model import SpikeGPTForCausalLM
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


ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODELS = ("spikegpt-shakespeare", "spikegpt-shakespeare-driven")  # the first is the default


def default_model_path() -> Path:
    """Directory of the small SpikeGPT bundled with the package (trained on Tiny Shakespeare)."""
    return ASSETS / BUNDLED_MODELS[0]


def bundled_model_path(name: str) -> Path:
    """Directory of a model bundled with the package, by name (``BUNDLED_MODELS``), so ``--model NAME`` works
    from any directory: ``spikegpt-shakespeare`` (the default) or ``spikegpt-shakespeare-driven`` (spike-driven:
    every projection reads spike counts; README, "Where the spikes go")."""
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


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(
    source: str | Path | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[SpikeGPTForCausalLM, PreTrainedTokenizerFast]:
    """The model and tokenizer at ``source`` (a directory or Hub id; None: the bundled model), in eval mode."""
    source = str(source) if source is not None else str(default_model_path())
    if source in BUNDLED_MODELS and not Path(source).exists():
        source = str(bundled_model_path(source))
    if _looks_local(source):
        _check_local(Path(source).expanduser())
        source = str(Path(source).expanduser())
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) or dtype is None else dtype
    try:
        model = SpikeGPTForCausalLM.from_pretrained(source, dtype=torch_dtype or torch.float32)
    except CheckpointError:
        raise
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load a SpikeGPT model from {source}: {first_line}") from e
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as e:
        raise CheckpointError(f"{source}: the model has no usable tokenizer ({e})") from e
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}"
        )
    return model.to(device).eval(), tokenizer
