"""Training checkpoints through ``accelerate``'s own state, plus the final Hugging Face model directory.

``OUTPUT/checkpoint-STEP/`` holds what ``Accelerator.save_state`` writes (the weights, the optimizer, the gradient
scaler, every process's RNG and the registered data position, each in whatever form the backend needs: whole for
DDP, sharded for FSDP and DeepSpeed ZeRO), the model's ``config.json``, the tokenizer and ``trainer_state.json``
(step, tokens seen, the run's options). It is written into a temporary directory, flushed to disk, then renamed:
a save killed midway leaves only a ``.tmp-*`` directory, never a half-written checkpoint. ``trainer_state.json``
is written last and marks a checkpoint complete. The learning-rate schedule is a function of the step, so the
step is the scheduler's whole state.

Without a filesystem shared by the machines (``per_node``), every machine's first process writes the whole
checkpoint into that machine's output directory and each process its own RNG beside it, so every machine can
resume from its own disk.
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


def resolve_resume(resume: str, output_dir: str | Path, accelerator=None) -> Path:
    """The checkpoint ``--resume`` names: 'latest' (in ``output_dir``) or a checkpoint directory. With an
    ``accelerator`` (every process calls this), 'latest' is the newest step every process finds complete: a run
    killed while saving may have finished that save on one machine and not on another."""
    if resume == "latest":
        steps = {checkpoint_step(p) for p in checkpoints(output_dir)}
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            steps = set.intersection(*gather_object([steps]))
        if not steps:
            raise TrainingError(f"--resume latest: no complete checkpoint in {output_dir}")
        return Path(output_dir) / f"{PREFIX}{max(steps)}"
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
    model_config,
    tokenizer,
    trainer_state: dict[str, Any],
    output_dir: str | Path,
    keep_last: int,
    per_node: bool = False,
) -> Path:
    """Write ``checkpoint-STEP`` atomically (every process calls this) and delete all but the newest ``keep_last``.

    ``per_node``: the output directory is not shared by the machines, so each machine writes its own copy (the
    ``accelerator`` must have been told so, ``project_configuration.save_on_each_node``)."""
    root = Path(output_dir)
    final = root / f"{PREFIX}{trainer_state['step']}"
    temp = root / f"{TEMP_PREFIX}{final.name}"
    writes = accelerator.is_local_main_process if per_node else accelerator.is_main_process
    if writes:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if writes:
        model_config.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
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


class DataPosition:
    """Where every process is in its training data, registered with ``accelerate`` for its checkpoints.

    ``accelerate`` asks every process for ``state_dict`` but keeps only the main process's answer, so the answer
    holds every process's position (gathered) and each takes back its own."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def state_dict(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        return {"ranks": gather_object([self.batches.state_dict()]) if self.world > 1 else [self.batches.state_dict()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state["ranks"][self.rank])  # the process count was checked before


# exponentiated, so kept in fp32: the WKV decay and bonus, and the encoders' learned log-thresholds
FP32_PARAMETERS = ("time_decay", "time_first", "log_threshold")


def export_model(
    model, state_dict: dict[str, torch.Tensor], tokenizer, output_dir: str | Path, card: str | None = None, dtype=None
) -> Path:
    """The final model into ``output_dir`` itself (a Hugging Face directory), each file written beside its target
    and renamed over it, so a killed export never leaves a truncated file. ``state_dict`` is the whole model's
    (``Accelerator.get_state_dict``, which gathers FSDP and ZeRO-3 shards); ``dtype`` (e.g. torch.bfloat16) stores
    all of it but ``FP32_PARAMETERS`` in that type, while the config still says float32: a spike is a
    threshold test, and half-precision arithmetic would flip some, so the model is meant to compute in fp32
    (transformers upcasts on load)."""
    root = Path(output_dir)
    temp = root / f"{TEMP_PREFIX}export"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if dtype is not None:
        state_dict = {
            name: t if name.endswith(FP32_PARAMETERS) or not t.is_floating_point() else t.to(dtype)
            for name, t in state_dict.items()
        }
    model.save_pretrained(temp, state_dict=state_dict, safe_serialization=True)
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
