"""Original SpikeGPT checkpoints (``.pth`` state dicts of ridgerchu/SpikeGPT ``src/model.py``) → Hugging Face
directories.

The shapes are inferred from the tensors (vocabulary, width, depth, FFN width, whether layer 0 is an "ffnPre"
channel mix); every key is checked, so a wrong, truncated or mismatched file fails with one line naming what is
wrong. Files are read with ``torch.load(weights_only=True)``: nothing is ever unpickled unsafely.

The original's inference code (``src/model_run.py``) departs from the function it trained: it binarises the
embedding only for a 77-token vocabulary, and divides activations by 2 every 6 layers (RWKV_RESCALE_LAYER), which
changes the LIF inputs. ``ConversionOptions.match_model_run`` reproduces both in the converted config; by default
the converted model computes the training function.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..modeling.config import SpikeGPTConfig
from ..modeling.model import SpikeGPTForCausalLM
from .tokenizer import char_tokenizer, load_tokenizer

MODEL_RUN_RESCALE_LAYER = 6  # RWKV_RESCALE_LAYER in the original src/model_run.py
MODEL_RUN_BINARY_VOCAB = 77  # model_run.py binarises the embedding only for this vocabulary size

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass
class ConversionOptions:
    ctx_len: int = 1024
    match_model_run: bool = False
    tokenizer: str | None = None  # a tokenizer.json (or directory / Hub id)
    char_vocab: str | None = None  # the original's character vocabulary JSON ({"0": "\n", ...}, UTF-16 or UTF-8)
    dtype: torch.dtype | None = None  # None: keep the checkpoint's


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: the archive is incomplete (truncated?)")
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle it: the file holds Python objects other than tensors, and loading them "
            "could run arbitrary code"
        ) from e
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, perhaps truncated ({reason})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found a {type(obj).__name__}")
    return obj


def infer_config(state: dict[str, torch.Tensor], path: Path, options: ConversionOptions) -> SpikeGPTConfig:
    """The ``SpikeGPTConfig`` the tensors imply."""
    if "emb.weight" not in state:
        raise CheckpointError(f"{path}: no emb.weight: not an original SpikeGPT checkpoint")
    if state["emb.weight"].dim() != 2:
        raise CheckpointError(f"{path}: emb.weight should be [vocab, n_embd], got {tuple(state['emb.weight'].shape)}")
    vocab, n_embd = state["emb.weight"].shape
    layers = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.fullmatch(key))}
    if not layers:
        raise CheckpointError(f"{path}: no blocks.N.* tensors")
    n_layer = max(layers) + 1
    missing = sorted(set(range(n_layer)) - layers)
    if missing:
        raise CheckpointError(f"{path}: blocks {missing} are missing (truncated or mismatched checkpoint)")
    ffn_key = "blocks.0.ffn.key.weight"
    if ffn_key not in state or state[ffn_key].dim() != 2:
        raise CheckpointError(f"{path}: missing tensor {ffn_key}")
    binary = True
    rescale = 0
    if options.match_model_run:
        binary = vocab == MODEL_RUN_BINARY_VOCAB
        rescale = MODEL_RUN_RESCALE_LAYER
    return SpikeGPTConfig(
        vocab_size=int(vocab),
        n_layer=n_layer,
        n_embd=int(n_embd),
        ctx_len=options.ctx_len,
        ffn_hidden=int(state[ffn_key].shape[0]),
        ffn_pre="blocks.0.ffnPre.key.weight" in state,
        binary_embedding=binary,
        rescale_layer=rescale,
        dropout=0.03,
    )


def map_state_dict(state: dict[str, torch.Tensor], config: SpikeGPTConfig, path: Path) -> dict[str, torch.Tensor]:
    """Original keys → this package's keys, checking every shape and that nothing is left over."""
    d, f = config.n_embd, config.ffn_hidden
    consumed: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{path}: missing tensor {key}")
        tensor = state[key]
        if tuple(tensor.shape) != shape and tuple(tensor.squeeze().shape) != shape:  # time_* are [1, 1, d] there
            raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {shape}")
        consumed.add(key)
        return tensor.reshape(shape)

    out = {
        "model.emb.weight": take("emb.weight", (config.vocab_size, d)),
        "model.ln_out.weight": take("ln_out.weight", (d,)),
        "model.ln_out.bias": take("ln_out.bias", (d,)),
        "head.weight": take("head.weight", (config.vocab_size, d)),
    }

    def channel_mix(src: str, dst: str) -> None:
        for name in ("time_mix_k", "time_mix_r"):
            out[f"{dst}.{name}"] = take(f"{src}.{name}", (d,))
        out[f"{dst}.key.weight"] = take(f"{src}.key.weight", (f, d))
        out[f"{dst}.receptance.weight"] = take(f"{src}.receptance.weight", (d, d))
        out[f"{dst}.value.weight"] = take(f"{src}.value.weight", (d, f))

    for i in range(config.n_layer):
        src, dst = f"blocks.{i}", f"model.blocks.{i}"
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            for p in ("weight", "bias"):
                out[f"{dst}.{ln}.{p}"] = take(f"{src}.{ln}.{p}", (d,))
        if i == 0 and config.ffn_pre:
            channel_mix(f"{src}.ffnPre", f"{dst}.ffn_pre")
        else:
            for name in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
                out[f"{dst}.att.{name}"] = take(f"{src}.att.{name}", (d,))
            for name in ("key", "value", "receptance", "output"):
                out[f"{dst}.att.{name}.weight"] = take(f"{src}.att.{name}.weight", (d, d))
        channel_mix(f"{src}.ffn", f"{dst}.ffn")
    extra = sorted(set(state) - consumed)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensors this architecture has no place for: {', '.join(extra[:5])}")
    return out


# the original's tokenizer (ridgerchu/SpikeGPT src/utils.py, TOKENIZER(UNKNOWN_CHAR='\ue083')) reads a character
# outside its vocabulary as this private-use character, which its vocabularies hold for the purpose
ORIGINAL_UNKNOWN = "\ue083"


def read_char_vocab(path: Path, vocab_size: int, report: Callable[[str], None]):
    """The original's character vocabulary file: JSON ``{"index": "char"}``, UTF-16 (as it writes it) or UTF-8.
    Unknown characters become the original's placeholder when the file has it, else an added ``<|unk|>`` when the
    checkpoint has a spare token; with neither there is no token for them, and ``report`` says so. The pad token is
    an added ``<|pad|>`` when a token is still spare, else the unknown token (``char_tokenizer``): the checkpoint's
    vocabulary size never changes."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such character vocabulary file")
    raw = path.read_bytes()
    for encoding in ("utf-16", "utf-8"):
        try:
            table = json.loads(raw.decode(encoding))
            break
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    else:
        raise CheckpointError(f"{path}: not a JSON character vocabulary in UTF-16 or UTF-8")
    try:
        chars = [table[str(i)] for i in range(len(table))]
    except KeyError as e:
        raise CheckpointError(f"{path}: character vocabulary has a gap at index {e}") from e
    if ORIGINAL_UNKNOWN in chars:
        return char_tokenizer(chars, end_of_text=False, unknown=ORIGINAL_UNKNOWN, pad=len(chars) < vocab_size)
    if len(chars) < vocab_size:
        return char_tokenizer(chars, end_of_text=False, pad=len(chars) + 1 < vocab_size)
    report(
        f"warning: {path} fills the checkpoint's {vocab_size} tokens and has no unknown character "
        f"({ORIGINAL_UNKNOWN!r}): characters outside it will get no token"
    )
    return char_tokenizer(chars, end_of_text=False, unknown=None, pad=False)


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: ConversionOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> SpikeGPTConfig:
    """Write the Hugging Face directory for an original checkpoint; ``output_dir`` appears only when complete."""
    options = options or ConversionOptions()
    source, output_dir = Path(source), Path(output_dir)
    report = progress or (lambda message: None)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise CheckpointError(f"{output_dir} exists and is not empty; choose a new directory")
    report(f"reading {source}")
    state = _load_state_dict(source)
    config = infer_config(state, source, options)
    tokenizer = None
    if options.char_vocab:
        tokenizer = read_char_vocab(Path(options.char_vocab), config.vocab_size, report)
    elif options.tokenizer:
        tokenizer = load_tokenizer(options.tokenizer)
    if tokenizer is not None:
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        if len(tokenizer) > config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary only {config.vocab_size}"
            )
    report(
        f"{config.n_layer} layers, width {config.n_embd}, vocabulary {config.vocab_size}, "
        f"FFN {config.ffn_hidden}{', ffnPre' if config.ffn_pre else ''}"
    )
    weights = map_state_dict(state, config, source)
    model = SpikeGPTForCausalLM(config)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    if options.dtype is not None:
        model = model.to(options.dtype)
        for name, param in model.named_parameters():
            if name.endswith(("time_decay", "time_first")):  # kept fp32: exp(time_decay) needs the precision
                param.data = param.data.float()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        report(f"writing {output_dir}")
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config
