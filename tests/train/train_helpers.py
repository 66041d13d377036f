"""Helpers of the training tests: a corpus the tests write, tiny run options, and the ``offline`` fixture every
training test module imports (autouse: no network, a private datasets cache, a fresh accelerate state)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = [
    "to", "be", "or", "not", "that", "is", "the", "question",
    "whether", "tis", "nobler", "in", "mind", "suffer", "slings", "arrows",
]  # fmt: skip


def write_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A small text of speaker-tagged lines (about 20 KB for 400 lines)."""
    rng = random.Random(seed)
    speakers = ["HAMLET", "OPHELIA", "HORATIO"]
    text = "".join(
        f"{rng.choice(speakers)}:\n{' '.join(rng.choices(WORDS, k=8)).capitalize()}.\n\n" for _ in range(lines)
    )
    path.write_text(text)
    return path


def tiny_run_args(dataset: Path, output_dir: Path, **overrides) -> list[str]:
    """`spikegpt train` arguments for a 2-layer, 32-wide model on ``dataset``."""
    options = {
        "dataset": dataset,
        "output_dir": output_dir,
        "n_layer": 2,
        "n_embd": 32,
        "ctx_len": 16,
        "batch_size": 4,
        "max_steps": 6,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_interval": 3,
        "eval_max_blocks": 8,
        "save_interval": 3,
        "log_interval": 1,
        "cache_dir": output_dir.parent / "datasets-cache",
        "seed": 3,
    }
    options.update(overrides)
    args = ["train"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, a private datasets cache, and a fresh accelerate state for each in-process run."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def as_saved(name: str, data: bytes):
    """A saved file's content as the bundled-model tests compare it: JSON files parsed, without the
    ``transformers_version`` that transformers stamps into them (a new transformers release is not a stale file);
    every other file byte for byte."""
    if not name.endswith(".json"):
        return data
    content = json.loads(data)
    content.pop("transformers_version", None)
    return content
