"""Training checkpoints: Hugging Face model directories plus the state that resumes a run exactly.

``OUTPUT/checkpoint-STEP/`` holds ``config.json``, ``model.safetensors`` and the tokenizer (so it loads like any
model), ``optimizer.pt``, one ``rank_state_R.pt`` per process (RNG and data position) and ``trainer_state.json``
(step, tokens seen, the run's options). It is written into a temporary directory, flushed to disk, then renamed:
a save killed midway leaves only a ``.tmp-*`` directory, never a half-written checkpoint. ``trainer_state.json``
is written last and marks a checkpoint complete. The learning-rate schedule is a function of the step, so the
step is the scheduler's whole state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from spikegpt.errors import TrainingError

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
TEMP_PREFIX = ".tmp-"
# what a published model directory holds (no optimizer or run state)
MODEL_FILES = (
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
    "config.json",  # last: a directory with config.json is taken for a model
)


def rank_state_file(rank: int) -> str:
    return f"rank_state_{rank}.pt"


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """The checkpoint ``--resume`` names: 'latest' (in ``output_dir``) or a checkpoint directory."""
    if resume == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise TrainingError(f"--resume latest: no complete checkpoint in {output_dir}")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / TRAINER_STATE).is_file():
        raise TrainingError(f"--resume {resume}: not a complete training checkpoint (no {TRAINER_STATE})")
    return path


def _fsync_tree(path: Path) -> None:
    """Flush every file (made readable by all, as the umask allows: some writers create files 0600) and the
    directory to disk."""
    mode = 0o666 & ~_umask()
    for item in sorted(path.rglob("*")):
        if item.is_file():
            os.chmod(item, mode)
            with open(item, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (the same step saved again) is moved aside first."""
    old = None
    if dst.exists():
        old = dst.with_name(f"{TEMP_PREFIX}old-{dst.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
    os.rename(src, dst)
    _fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    accelerator,
    model,
    tokenizer,
    optimizer,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    output_dir: str | Path,
    keep_last: int,
) -> Path:
    """Write ``checkpoint-STEP`` atomically (every process calls this) and delete all but the newest ``keep_last``."""
    root = Path(output_dir)
    final = root / f"{PREFIX}{trainer_state['step']}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rank_state, temp / rank_state_file(accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)
        torch.save(optimizer.state_dict(), temp / OPTIMIZER)
        (temp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
        _fsync_tree(temp)
        _replace_dir(temp, final)
        for stale in checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_STATE).read_text())


def load_optimizer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)


def load_rank_state(path: Path, rank: int) -> dict[str, Any]:
    file = path / rank_state_file(rank)
    if not file.is_file():
        raise TrainingError(f"{path} was written by fewer processes (no {file.name}); resume with the same number")
    return torch.load(file, map_location="cpu", weights_only=True)


FP32_PARAMETERS = ("time_decay", "time_first")  # the WKV decay and bonus: exponentiated, so kept in fp32


def _declare_fp32(config_file: Path) -> None:
    """Weights stored in half precision still load as fp32 by default: a spike is a threshold test, and half-precision
    arithmetic would flip some, so the model is meant to compute in fp32 (transformers upcasts on load)."""
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_model(model, tokenizer, output_dir: str | Path, card: str | None = None, dtype=None) -> Path:
    """The final model into ``output_dir`` itself (a Hugging Face directory), each file written beside its target
    and renamed over it, so a killed export never leaves a truncated file. ``dtype`` (e.g. torch.bfloat16) casts
    the model in place, all but its time_decay and time_first, before it is written."""
    root = Path(output_dir)
    temp = root / f"{TEMP_PREFIX}export"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if dtype is not None:
        for name, param in model.named_parameters():
            if not name.endswith(FP32_PARAMETERS):
                param.data = param.data.to(dtype)
    model.save_pretrained(temp, safe_serialization=True)
    if dtype is not None:
        _declare_fp32(temp / "config.json")
    tokenizer.save_pretrained(temp)
    if card is not None:
        (temp / "README.md").write_text(card, encoding="utf-8")
    _fsync_tree(temp)
    present = {p.name for p in temp.iterdir()}
    for name in [n for n in MODEL_FILES if n in present] + sorted(present - set(MODEL_FILES)):
        os.replace(temp / name, root / name)
    _fsync_dir(root)
    shutil.rmtree(temp, ignore_errors=True)
    return root
