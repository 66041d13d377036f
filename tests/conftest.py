"""Fixtures shared by every part of the suite: tiny SpikeGPT models, in memory and saved on disk."""

from __future__ import annotations

import os
import secrets
import socket
import threading
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
