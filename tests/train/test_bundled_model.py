"""The model that ships inside the package: present, small, loadable, used when no model is named, and as good on
Tiny Shakespeare's held-out tail as its card says."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SHARED_DATA
from train_helpers import as_saved, offline  # noqa: F401 (offline is an autouse fixture)

import spikegpt
from spikegpt.cli import main
from spikegpt.hub.checkpoint import load_model, saved_files
from spikegpt.modeling.code_files import code_files
from spikegpt.train.model_card import CARD_METADATA, HOW_TO_LOAD

BUNDLED = spikegpt.default_model_path()


def test_the_bundled_model_is_a_small_complete_model_directory():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (BUNDLED / name).is_file(), name
    assert (BUNDLED / "model.safetensors").stat().st_size < 5 * 2**20
    model, tokenizer = load_model()
    assert model.config.spiking and model.config.vocab_size == len(tokenizer)
    assert tokenizer.decode(tokenizer.encode("ROMEO:\n")) == "ROMEO:\n"


def test_generate_uses_the_bundled_model_without_model(capsys):
    argv = ["generate", "--prompt", "ROMEO:", "--max-new-tokens", "120", "--seed", "1", "--temperature", "0.8"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert len(text.strip()) > 60 and len(re.findall(r"[A-Za-z]+", text)) > 10


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare").is_dir(), reason="needs ../shared/data/tinyshakespeare")
def test_held_out_bits_per_byte_match_the_card(capsys, tmp_path):
    corpus = SHARED_DATA / "tinyshakespeare" / "input.txt"
    argv = ["eval", "--dataset", str(corpus), "--cache-dir", str(tmp_path), "--batch-size", "16", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    card = (BUNDLED / "README.md").read_text()
    claimed = float(re.search(r"\| bits per byte \| ([0-9.]+) \|", card).group(1))
    assert result["tokens"] == 111_539  # the whole held-out tail, as the card says
    assert abs(result["bits_per_byte"] - claimed) < 1e-4, (result["bits_per_byte"], claimed)


def test_the_bundled_files_are_what_saving_writes_now(tmp_path):
    """Configuration, tokenizer (chat template, unknown token) and code files as every checkpoint now carries them;
    the weights file is the trained one, never rewritten (scripts/refresh_bundled_model.py)."""
    model, tokenizer = load_model()
    written = saved_files(model, tokenizer, tmp_path)
    assert {"chat_template.jinja", *code_files()} <= set(written)
    assert {path.name for path in BUNDLED.glob("*.py")} == set(code_files()), "stale code files"
    for name, data in written.items():
        if name != "model.safetensors":
            stale = f"{name} is stale: run python scripts/refresh_bundled_model.py"
            assert as_saved(name, (BUNDLED / name).read_bytes()) == as_saved(name, data), stale


def test_the_model_cards_say_what_loads_them():
    card = (BUNDLED / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "library_name: transformers" in front_matter and "pipeline_tag: text-generation" in front_matter
    assert "custom_code" in front_matter and "custom_code" in CARD_METADATA[-1]
    assert "trust_remote_code=True" in card and "pip install spikegpt" in card
    assert "trust_remote_code=True" in HOW_TO_LOAD and "pip install spikegpt" in HOW_TO_LOAD
