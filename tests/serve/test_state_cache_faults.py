"""Faults in a state-cache directory through real servers: nothing there can take a server down, hang its start
or change its text. Files rewritten or truncated under a running server, FIFOs, symbolic links (a loop among them)
and oversized files at start-up, and states of the wrong shape, dtype, with NaN or inf, or another prefix's tokens:
each server answers as a cold one does, warns once per bad file, and writes the correct state in its place."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from conftest import watched_fifo
from safetensors import safe_open
from safetensors.torch import load, save_file
from serve_helpers import run_server, tiny_settings
from transformers import AutoTokenizer

from spikegpt.serve.testing import ServerProcess

CHUNK = 8
PROMPT_CHARS = 100  # one token per character; the longest cached prefix of a prompt is 96 tokens
CACHED = PROMPT_CHARS // CHUNK * CHUNK
STRIDE = 64  # the server's default stride of cached states: without the longest prefix's file, this one is read
NAMES = ["ROMEO", "JULIET", "TYBALT", "MERCUTIO", "BENVOLIO", "CAPULET", "NURSE"]
PROMPTS = {name: (f"{name}: " * 20)[:PROMPT_CHARS] for name in NAMES}


def body(prompt: str) -> dict:
    return {"prompt": prompt, "max_tokens": 6, "temperature": 1.0, "seed": 5, "ignore_eos": True}


def complete(client: httpx.Client, prompt: str) -> dict:
    response = client.post("/v1/completions", json=body(prompt))
    assert response.status_code == 200, response.text
    return response.json()


def text_and_cached(reply: dict) -> tuple[str, int]:
    return reply["choices"][0]["text"], reply["usage"]["prompt_tokens_details"]["cached_tokens"]


def settings(model_dir: Path, directory: Path):
    return tiny_settings(model_dir, prefill_chunk=CHUNK, state_cache_dir=str(directory))


def read_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (owned copies) and the metadata of a state file."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return {name: t.clone() for name, t in load(path.read_bytes()).items()}, metadata


@dataclass
class Populated:
    """A state directory written by a cold server, the text it gave for each prompt, and each prompt's file that a
    later request reads (its longest cached prefix)."""

    directory: Path
    cold: dict[str, str]
    longest: dict[str, str]  # prompt name -> file name

    def copy(self, destination: Path) -> Path:
        shutil.copytree(self.directory, destination)
        return destination


@pytest.fixture(scope="module")
def populated(tiny_model_dir, tmp_path_factory) -> Populated:
    directory = tmp_path_factory.mktemp("state-cache") / "states"
    with run_server(settings(tiny_model_dir, directory)) as server, server.client() as client:
        cold = {}
        for name, prompt in PROMPTS.items():
            cold[name], cached = text_and_cached(complete(client, prompt))
            assert cached == 0
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prefixes = {tuple(tokenizer(prompt)["input_ids"][:CACHED]): name for name, prompt in PROMPTS.items()}
    longest = {}
    for path in directory.glob("*.safetensors"):
        name = prefixes.get(tuple(read_state_file(path)[0]["tokens"].tolist()))
        if name is not None:
            longest[name] = path.name
    assert set(longest) == set(PROMPTS)
    return Populated(directory, cold, longest)


def test_files_rewritten_or_truncated_under_a_running_server_change_nothing(tiny_model_dir, populated, tmp_path):
    """A subprocess: reading a truncated memory-mapped file ends a process with SIGBUS."""
    directory = populated.copy(tmp_path / "states")
    server = ServerProcess(
        "--model", str(tiny_model_dir), "--state-cache-dir", str(directory), "--prefill-chunk", str(CHUNK),
        "--max-batch", "4", "--max-tokens-cap", "100000", "--threads", str(torch.get_num_threads()),
    )  # fmt: skip
    prompt, cold = PROMPTS["ROMEO"], populated.cold["ROMEO"]
    try:
        with httpx.Client(base_url=server.wait_ready(), timeout=30) as client:
            assert text_and_cached(complete(client, prompt)) == (cold, CACHED)  # read from its file
            assert str(directory) not in Path(f"/proc/{server.process.pid}/maps").read_text()
            files = list(directory.glob("*.safetensors"))
            for path in files:  # in place, as cp or rsync --inplace do
                with path.open("r+b") as f:
                    f.write(bytes(path.stat().st_size))
            assert text_and_cached(complete(client, prompt)) == (cold, CACHED)
            for path in files:
                os.truncate(path, 0)
            assert text_and_cached(complete(client, prompt)) == (cold, CACHED)
        assert server.process.poll() is None, "".join(server.log)
    finally:
        server.stop()


def oversized_state_file(path: Path, metadata: dict[str, str], size: int) -> None:
    """A sparse file of ``size`` bytes with this model's tag, whose header declares all of it as prefix tokens."""
    data = size - 8 - 1024
    header = {"__metadata__": metadata, "tokens": {"dtype": "I32", "shape": [data // 4], "data_offsets": [0, data]}}
    raw = json.dumps(header).encode().ljust(1024)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(size)


def test_a_start_skips_fifos_links_and_oversized_files_within_seconds(tiny_model_dir, populated, tmp_path, caplog):
    directory = populated.copy(tmp_path / "states")
    fifo = directory / "fifo.safetensors"
    os.mkfifo(fifo)
    (directory / "loop.safetensors").symlink_to("loop.safetensors")
    (directory / "zero.safetensors").symlink_to("/dev/zero")
    (directory / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    # an entry's own file, moved out and linked back: a link is never read, the entry is recomputed
    victim = directory / populated.longest["JULIET"]
    moved = shutil.move(victim, tmp_path / victim.name)
    victim.symlink_to(moved)
    _, metadata = read_state_file(directory / populated.longest["ROMEO"])
    oversized_state_file(directory / f"{'0' * 32}.safetensors", metadata, 2 << 30)
    with (
        watched_fifo(fifo, patience=20) as released,
        caplog.at_level(logging.WARNING, logger="spikegpt"),
        run_server(settings(tiny_model_dir, directory)) as server,
        server.client() as client,
    ):
        assert text_and_cached(complete(client, PROMPTS["JULIET"])) == (populated.cold["JULIET"], STRIDE)
        assert text_and_cached(complete(client, PROMPTS["ROMEO"])) == (populated.cold["ROMEO"], CACHED)
    assert not released, "the start waited for a writer to the FIFO"
    assert victim.is_file() and not victim.is_symlink()  # the recomputed state replaced the link
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "skipped 6 file(s)" in warnings[0] and "5 not regular files" in warnings[0], warnings
    assert "1 larger than" in warnings[0], warnings


def wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["wkv_num"] = torch.zeros(tensors["wkv_num"].shape[0], tensors["wkv_num"].shape[1] + 1)


def broadcasting_shape(tensors: dict[str, torch.Tensor]) -> None:
    tensors["att_shift"] = tensors["att_shift"][:1].clone()  # [1, n_embd]: it would broadcast over the layers


def wrong_dtype(tensors: dict[str, torch.Tensor]) -> None:
    tensors["att_v"] = tensors["att_v"].half()


def nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors["wkv_num"][0, 0] = float("nan")


def inf(tensors: dict[str, torch.Tensor]) -> None:
    tensors["att_v"][1, 3] = float("inf")


FAULTS = {"JULIET": wrong_shape, "TYBALT": broadcasting_shape, "MERCUTIO": wrong_dtype, "BENVOLIO": nan, "CAPULET": inf}
FOREIGN = "NURSE"  # gets ROMEO's file under its own name: another prefix's tokens


def test_bad_states_are_refused_once_and_replaced_by_correct_ones(tiny_model_dir, populated, tmp_path, caplog):
    directory = populated.copy(tmp_path / "states")
    paths = {name: directory / populated.longest[name] for name in [*FAULTS, FOREIGN]}
    originals = {name: read_state_file(path) for name, path in paths.items()}
    for name, fault in FAULTS.items():
        tensors, metadata = read_state_file(paths[name])
        fault(tensors)
        save_file(tensors, str(paths[name]), metadata=metadata)
    shutil.copyfile(directory / populated.longest["ROMEO"], paths[FOREIGN])
    with (
        caplog.at_level(logging.WARNING, logger="spikegpt"),
        run_server(settings(tiny_model_dir, directory)) as server,
        server.client() as client,
    ):
        first = {name: text_and_cached(complete(client, PROMPTS[name])) for name in paths}
        again = {name: text_and_cached(complete(client, PROMPTS[name])) for name in paths}
    assert first == {name: (populated.cold[name], STRIDE) for name in paths}
    assert again == {name: (populated.cold[name], CACHED) for name in paths}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(paths), warnings
    for name, path in paths.items():
        assert sum(path.name in w for w in warnings) == 1, (name, warnings)
        tensors, metadata = read_state_file(path)  # the correct state, bit for bit
        assert metadata == originals[name][1] and tensors.keys() == originals[name][0].keys()
        assert all(torch.equal(t, originals[name][0][k]) for k, t in tensors.items()), name
