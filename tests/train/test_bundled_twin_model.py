"""The third bundled model, the non-spiking twin of the other two: present, small, loadable by name wherever a model
is (training's --init-from and --teacher included), and as good on Tiny Shakespeare's held-out tail as its card
says."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import SHARED_DATA
from train_helpers import as_saved, offline  # noqa: F401 (offline is an autouse fixture)

from spikegpt import bundled_model_path
from spikegpt.cli import main
from spikegpt.hub.checkpoint import BUNDLED_MODELS, load_model, saved_files
from spikegpt.modeling.code_files import code_files
from spikegpt.train.trainer import model_source

NAME = "spikegpt-shakespeare-twin"
TWIN = bundled_model_path(NAME)


def test_the_twin_is_a_small_complete_non_spiking_directory():
    assert NAME in BUNDLED_MODELS and BUNDLED_MODELS[0] == "spikegpt-shakespeare"  # still the default
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (TWIN / name).is_file(), name
    assert (TWIN / "model.safetensors").stat().st_size < 5 * 2**20
    model, tokenizer = load_model(NAME)  # by name, from any directory
    spiking, _ = load_model("spikegpt-shakespeare")
    assert not model.config.spiking
    # the spiking models' architecture and vocabulary: a conversion source and a teacher for them
    for field in ("n_layer", "n_embd", "ffn_hidden", "ctx_len", "vocab_size"):
        assert getattr(model.config, field) == getattr(spiking.config, field), field
    assert tokenizer.get_vocab() == load_model("spikegpt-shakespeare-driven")[1].get_vocab()
    ids = torch.tensor([tokenizer.encode("ROMEO:\nWhat light")])
    with torch.inference_mode():
        stats = model(ids, output_spike_stats=True).spike_stats
    assert int(stats.reads[..., 1].sum()) == 0  # its products read real values: no spikes anywhere
    assert model_source(NAME) == str(TWIN)  # training finds it by name


def test_the_twin_files_are_what_saving_writes_now(tmp_path):
    """Configuration, tokenizer (chat template, unknown token) and the code files that let Hugging Face tools load it
    (``trust_remote_code``), as every checkpoint now carries them; its card says how to load it."""
    model, tokenizer = load_model(NAME)
    written = saved_files(model, tokenizer, tmp_path)
    assert {"chat_template.jinja", *code_files()} <= set(written)
    assert {path.name for path in TWIN.glob("*.py")} == set(code_files()), "stale code files"
    for name, data in written.items():
        if name != "model.safetensors":
            stale = f"{name} is stale: run python scripts/refresh_bundled_model.py"
            assert as_saved(name, (TWIN / name).read_bytes()) == as_saved(name, data), stale
    card = (TWIN / "README.md").read_text()
    assert "custom_code" in card.split("---")[1] and "trust_remote_code=True" in card


def test_generate_runs_the_twin_by_name(capsys):
    argv = ["generate", "--model", NAME, "--prompt", "ROMEO:", "--max-new-tokens", "120", "--seed", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert len(text.strip()) > 60 and len(re.findall(r"[A-Za-z]+", text)) > 10


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare").is_dir(), reason="needs ../shared/data/tinyshakespeare")
def test_held_out_bits_per_byte_match_the_card(capsys, tmp_path):
    corpus = SHARED_DATA / "tinyshakespeare" / "input.txt"
    argv = ["eval", "--model", NAME, "--dataset", str(corpus), "--cache-dir", str(tmp_path), "--batch-size", "16"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    card = (TWIN / "README.md").read_text()
    claimed = float(re.search(r"\| bits per byte, all 111,539 held-out characters \| ([0-9.]+) \|", card).group(1))
    assert result["tokens"] == 111_539
    assert abs(result["bits_per_byte"] - claimed) < 1e-4, (result["bits_per_byte"], claimed)
