"""The second bundled model, spike-driven (every projection reads spike counts): present, small, loadable by name
wherever a model is, and as good on Tiny Shakespeare's held-out tail as its card says."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import SHARED_DATA
from train_helpers import as_saved, offline  # noqa: F401 (offline is an autouse fixture)

from spikegpt import bundled_model_path
from spikegpt.cli import main
from spikegpt.errors import CheckpointError
from spikegpt.hub.checkpoint import load_model, saved_files
from spikegpt.modeling.code_files import code_files

NAME = "spikegpt-shakespeare-driven"
DRIVEN = bundled_model_path(NAME)


def test_the_driven_model_is_a_small_complete_spike_driven_directory():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (DRIVEN / name).is_file(), name
    assert (DRIVEN / "model.safetensors").stat().st_size < 5 * 2**20
    model, tokenizer = load_model(NAME)  # by name, from any directory
    config = model.config
    assert config.spiking and config.spike_placement == "inputs" and config.input_spikes == "counts"
    assert config.vocab_size == len(tokenizer)
    ids = torch.tensor([tokenizer.encode("ROMEO:\nWhat light")])
    with torch.inference_mode():
        stats = model(ids, output_spike_stats=True).spike_stats
    zero = 1 - stats.reads[..., 0].sum() / (ids.shape[1] * (4 * 6 * 192 + 4 * 768))
    assert 0.2 < float(zero) < 0.9  # it reads sparse spike counts


def test_the_driven_files_are_what_saving_writes_now(tmp_path):
    """Configuration, tokenizer (chat template, unknown token) and the code files that let Hugging Face tools load it
    (``trust_remote_code``), as every checkpoint now carries them; its card says how to load it."""
    model, tokenizer = load_model(NAME)
    written = saved_files(model, tokenizer, tmp_path)
    assert {"chat_template.jinja", *code_files()} <= set(written)
    assert {path.name for path in DRIVEN.glob("*.py")} == set(code_files()), "stale code files"
    for name, data in written.items():
        if name != "model.safetensors":
            stale = f"{name} is stale: re-save the driven model (its card)"
            assert as_saved(name, (DRIVEN / name).read_bytes()) == as_saved(name, data), stale
    card = (DRIVEN / "README.md").read_text()
    assert "custom_code" in card.split("---")[1] and "trust_remote_code=True" in card


def test_unknown_bundled_names_are_refused():
    with pytest.raises(CheckpointError, match="no bundled model 'spikegpt-nothing'"):
        bundled_model_path("spikegpt-nothing")


def test_generate_and_energy_run_the_driven_model_by_name(capsys):
    argv = ["generate", "--model", NAME, "--prompt", "ROMEO:", "--max-new-tokens", "120", "--seed", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert len(text.strip()) > 60 and len(re.findall(r"[A-Za-z]+", text)) > 10
    assert main(["energy", "--model", NAME, "--rule", "event", "--prompt", "ROMEO: But soft", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    baselines = report["baselines"]
    assert report["rule"] == "event" and baselines["spiking_off"]["ratio"] > 2
    assert set(baselines) >= {"spiking_off", "equal_bit_int8"}


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare").is_dir(), reason="needs ../shared/data/tinyshakespeare")
def test_held_out_bits_per_byte_match_the_card(capsys, tmp_path):
    corpus = SHARED_DATA / "tinyshakespeare" / "input.txt"
    argv = ["eval", "--model", NAME, "--dataset", str(corpus), "--cache-dir", str(tmp_path), "--batch-size", "16"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    card = (DRIVEN / "README.md").read_text()
    claimed = float(re.search(r"\| bits per byte, all 111,539 held-out characters \| ([0-9.]+) \|", card).group(1))
    assert result["tokens"] == 111_539
    assert abs(result["bits_per_byte"] - claimed) < 1e-4, (result["bits_per_byte"], claimed)
