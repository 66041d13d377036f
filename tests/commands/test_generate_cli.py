"""`spikegpt generate` end to end, as a user runs it: a real process on a saved model directory."""

from __future__ import annotations

import re
import subprocess
import sys


def spikegpt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spikegpt.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_streams_text_and_a_summary(tiny_model_dir):
    args = ("generate", "--model", str(tiny_model_dir), "--prompt", "To be, or not", "--max-new-tokens", "25")
    result = spikegpt(*args, "--seed", "3", "--temperature", "0.9")
    assert result.returncode == 0, result.stderr
    # a clean start: the summary line is all of stderr (no transformers warnings, no bar in a captured stream)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    match = re.search(
        r"prompt 13 tokens, generated (\d+) tokens .* mean firing rate 0\.\d+, finish reason (\w+)", summary
    )
    assert match, summary
    generated, reason = int(match.group(1)), match.group(2)
    assert (generated == 25 and reason == "length") or (generated <= 25 and reason == "stop")
    assert len(result.stdout.strip("\n")) > 0
    again = spikegpt(*args, "--seed", "3", "--temperature", "0.9")
    assert again.stdout == result.stdout, "the same seed must give the same text"


def test_greedy_generation_matches_the_model(tiny_model_dir):
    import torch

    from spikegpt.hub.checkpoint import load_model

    model, tokenizer = load_model(tiny_model_dir)
    prompt = "abc"
    ids = torch.tensor([tokenizer.encode(prompt)])
    expected = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    eos = tokenizer.eos_token_id
    if eos in expected.tolist():
        expected = expected[: expected.tolist().index(eos)]
    result = spikegpt(
        "generate", "--model", str(tiny_model_dir), "--prompt", prompt, "--max-new-tokens", "10", "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == tokenizer.decode(expected).rstrip("\n")


def test_errors_are_one_line_without_traceback(tmp_path):
    result = spikegpt("generate", "--model", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"spikegpt generate: error: {tmp_path / 'nowhere'}: no such model directory"
    bad_param = spikegpt("generate", "--model", str(tmp_path), "--prompt", "hi", "--top-p", "0")
    assert bad_param.returncode == 1 and "Traceback" not in bad_param.stderr


def test_help_explains_every_flag():
    result = spikegpt("generate", "--help")
    assert result.returncode == 0
    for flag in (
        "--model",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--top-p",
        "--top-k",
        "--seed",
        "--device",
        "--dtype",
    ):
        assert flag in result.stdout
