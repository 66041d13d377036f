"""Fixtures shared by every part of the suite: tiny SpikeGPT models, in memory and saved on disk."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.hub.tokenizer import char_tokenizer
from spikegpt.kernels import reload_kernel_backend

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Commands, loaders and engines choose torch's thread count by how busy the machine is (spikegpt.threads); the suite
# keeps torch's own count instead, in this process and in the commands it runs, so that no result depends on the
# load of the moment. The tests of that choice (tests/core/test_threads.py) remove the variable.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

# A small alphabet the tests write their own text in.
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\n-é"


def free_port() -> int:
    """A loopback port free at the moment of asking (for processes that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_threads() -> int:
    """Torch's CPU thread count as a thread started now sees it: the process's. (A thread that has already run torch
    code keeps the count it started with until it sets one itself, so a count set in another thread, as the server
    sets it, shows here and not in the test's own thread.)"""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


# Lets go every reader that waits to open a FIFO (see watched_fifo), printing a line for each.
_FIFO_RELEASER = """
import os, sys, time
fifo, patience = sys.argv[1], float(sys.argv[2])
time.sleep(patience)
while True:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while nobody has it open for reading
        print("released", flush=True)
    except OSError:
        pass
    time.sleep(0.05)
"""


@contextmanager
def watched_fifo(fifo: Path, patience: float = 10.0) -> Iterator[list[str]]:
    """Run a block that must never open ``fifo`` for reading (an open that waits for a writer forever). After
    ``patience`` seconds every reader waiting on it is let go (its writing end opened and closed: the reader reads
    nothing), so that code which opens it fails a test instead of hanging it. The releasing runs in another process:
    a reader blocked inside an extension may hold the GIL, and no thread of this process would run. Yields a list
    that holds, once the block has ended, one line per reader let go: empty when nothing opened the FIFO."""
    releaser = subprocess.Popen(
        [sys.executable, "-c", _FIFO_RELEASER, str(fifo), str(patience)], stdout=subprocess.PIPE, text=True
    )
    released: list[str] = []
    try:
        yield released
    finally:
        releaser.kill()
        released += releaser.communicate()[0].split()


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest deviation of ``out`` from ``reference`` relative to the reference's largest magnitude."""
    out, reference = out.detach(), reference.detach()
    return float((out.double() - reference).abs().max() / reference.abs().max())


def tiny_config(**overrides) -> SpikeGPTConfig:
    """2 layers, 32 channels: big enough to spike in every layer, small enough for any test."""
    fields = dict(vocab_size=len(ALPHABET) + 1, n_layer=2, n_embd=32, ctx_len=64, dropout=0.0)
    fields.update(overrides)
    return SpikeGPTConfig(**fields)


def lively_weights_(model: SpikeGPTForCausalLM, seed: int) -> SpikeGPTForCausalLM:
    """Replace RWKV's initialisation (which starts with silent LIF layers) by random weights that make every
    layer spike at a moderate rate, so tests exercise real spiking."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln" in name or "ln_out" in name:
                continue
            if name.endswith("time_decay"):
                param.copy_(torch.randn(param.shape, generator=generator))
            elif "time_mix" in name:
                param.copy_(torch.rand(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / param.shape[-1] ** 0.5))
    return model


@pytest.fixture(autouse=True)
def fresh_kernel_backend():
    """The kernel dispatch reads ``SPIKEGPT_KERNELS`` once and caches it: each test starts (and leaves) with it
    unread, so a test's ``monkeypatch.setenv`` takes effect; a test that changes it midway reloads it itself."""
    reload_kernel_backend()
    yield
    reload_kernel_backend()


@pytest.fixture(params=["compiled", "reference"])
def int8_backend(request, monkeypatch) -> str:
    """Each implementation of the int8 products in turn: the compiled kernels (skipped, saying why, where they
    cannot be built) and the PyTorch reference (``SPIKEGPT_KERNELS=torch``)."""
    from spikegpt.kernels import int8_cpu

    if request.param == "reference":
        monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
        reload_kernel_backend()
    elif not int8_cpu.available():
        pytest.skip("the compiled int8 kernels cannot be built on this machine")
    return request.param


@pytest.fixture
def seed() -> int:
    """A fresh random seed per test, also seeding torch's global generator. It is printed, so a failing test's
    output shows it; SPIKEGPT_TEST_SEED=<seed> replays that run."""
    value = int(os.environ.get("SPIKEGPT_TEST_SEED") or secrets.randbelow(2**31))
    print(f"seed={value} (replay with SPIKEGPT_TEST_SEED={value})")
    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny SpikeGPT (random lively weights) with a character tokenizer: a real Hugging Face directory."""
    path = tmp_path_factory.mktemp("tiny-spikegpt")
    tokenizer = char_tokenizer(ALPHABET)
    config = tiny_config(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model = lively_weights_(SpikeGPTForCausalLM(config), seed=1234).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
