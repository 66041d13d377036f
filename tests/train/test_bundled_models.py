"""The models that ship inside the package (``BUNDLED_MODELS``): each present, small, loadable by name from any
directory, carrying the files saving writes now and a card that says how to load it, generating text, and as good
on Tiny Shakespeare's held-out tail as its card says; and each what it claims to be (spiking on the residual
stream, spike-driven, or not spiking at all)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import SHARED_DATA
from train_helpers import as_saved, offline  # noqa: F401 (offline is an autouse fixture)

import spikegpt
from spikegpt import bundled_model_path
from spikegpt.cli import main
from spikegpt.errors import CheckpointError
from spikegpt.hub.checkpoint import BUNDLED_MODELS, load_model, saved_files
from spikegpt.modeling.code_files import code_files
from spikegpt.train.model_card import CARD_METADATA, HOW_TO_LOAD
from spikegpt.train.trainer import model_source

DEFAULT, DRIVEN, TWIN = "spikegpt-shakespeare", "spikegpt-shakespeare-driven", "spikegpt-shakespeare-twin"
DRIVEN_K4 = "spikegpt-shakespeare-driven-k4"
PROMPT = "ROMEO:\nWhat light"


def product_inputs(model, text: str) -> dict[str, torch.Tensor]:
    """What every product of ``model`` (its layout's names) read on ``text``, captured where the product runs."""
    reads: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = []
    for product in model.layout.products:
        module = modules[product.name] if product.name in modules else modules[f"model.{product.name}"]
        hooks.append(module.register_forward_pre_hook(lambda m, args, name=product.name: reads.update({name: args[0]})))
    try:
        with torch.inference_mode():
            model(torch.tensor([text]))
    finally:
        for hook in hooks:
            hook.remove()
    return reads


def test_the_bundled_names_and_the_default():
    assert BUNDLED_MODELS == (DEFAULT, DRIVEN, TWIN, DRIVEN_K4)
    assert spikegpt.default_model_path() == bundled_model_path(DEFAULT)
    with pytest.raises(CheckpointError, match="no bundled model 'spikegpt-nothing'"):
        bundled_model_path("spikegpt-nothing")


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_each_is_a_small_complete_directory_loaded_by_name(name):
    path = bundled_model_path(name)
    for file in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (path / file).is_file(), file
    assert (path / "model.safetensors").stat().st_size < 5 * 2**20
    model, tokenizer = load_model(name)  # by name, from any directory
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.decode(tokenizer.encode("ROMEO:\n")) == "ROMEO:\n"
    assert model_source(name) == str(path)  # training finds it by name (--init-from, --teacher)


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_each_carries_the_files_saving_writes_now_and_a_card_that_loads_it(name, tmp_path):
    """Configuration, tokenizer (chat template, unknown token) and the code files that let Hugging Face tools load it
    (``trust_remote_code``); the weights file is the trained one, never rewritten (scripts/refresh_bundled_model.py)."""
    path = bundled_model_path(name)
    model, tokenizer = load_model(name)
    written = saved_files(model, tokenizer, tmp_path)
    assert {"chat_template.jinja", *code_files()} <= set(written)
    assert {p.name for p in path.glob("*.py")} == set(code_files()), "stale code files"
    for file, data in written.items():
        if file not in ("model.safetensors", "README.md"):
            stale = f"{file} is stale: run python scripts/refresh_bundled_model.py"
            assert as_saved(file, (path / file).read_bytes()) == as_saved(file, data), stale
    card = (path / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "library_name: transformers" in front_matter and "pipeline_tag: text-generation" in front_matter
    assert "custom_code" in front_matter and "trust_remote_code=True" in card


def test_the_card_metadata_and_loading_text_every_export_writes():
    assert "custom_code" in CARD_METADATA[-1]
    assert "trust_remote_code=True" in HOW_TO_LOAD and "pip install spikegpt" in HOW_TO_LOAD


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_each_generates_text_by_name(name, capsys):
    argv = ["generate", "--model", name, "--prompt", "ROMEO:", "--max-new-tokens", "120", "--seed", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert len(text.strip()) > 60 and len(re.findall(r"[A-Za-z]+", text)) > 10


def test_generate_uses_the_default_without_model(capsys):
    assert main(["generate", "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", "--model", DEFAULT, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first


def test_the_default_spikes_on_the_residual_stream():
    model, _ = load_model(DEFAULT)
    assert model.config.spiking and model.config.spike_placement == "residual"


@pytest.mark.parametrize(("name", "zeros"), [(DRIVEN, 0.85), (DRIVEN_K4, 0.3)])
def test_every_block_product_of_a_driven_model_reads_whole_numbers_mostly_zero(name, zeros):
    """The dispatch-level check: the tensor each block product receives is spike counts (whole numbers), and many
    of them are zero (about 90% for the shipped model's signed spikes, about half for counts K 4); only the head
    reads a real-valued input."""
    model, tokenizer = load_model(name)
    assert model.config.spiking and model.config.spike_placement == "inputs"
    reads = product_inputs(model, tokenizer.encode(PROMPT))
    assert set(reads) == set(model.layout.product_names)
    for product in model.layout.products:
        x = reads[product.name]
        if product.name == "head":
            assert not product.reads_spikes and not torch.equal(x, x.round())
            continue
        assert product.reads_spikes and torch.equal(x, x.round()), product.name
        assert x.abs().max() <= model.config.spike_count_max
    block = torch.cat([reads[p.name].flatten() for p in model.layout.products if p.name != "head"])
    assert float((block == 0).float().mean()) > zeros


def test_the_twin_reads_no_spikes_and_shares_the_spiking_models_shape():
    twin, tokenizer = load_model(TWIN)
    assert not twin.config.spiking
    for other in (DEFAULT, DRIVEN, DRIVEN_K4):
        model, other_tokenizer = load_model(other)
        for field in ("n_layer", "n_embd", "ffn_hidden", "ctx_len", "vocab_size"):  # a conversion source, a teacher
            assert getattr(twin.config, field) == getattr(model.config, field), (other, field)
        assert tokenizer.get_vocab() == other_tokenizer.get_vocab()
    with torch.inference_mode():
        stats = twin(torch.tensor([tokenizer.encode(PROMPT)]), output_spike_stats=True).spike_stats
    assert int(stats.reads[..., 1].sum()) == 0  # its products read real values: no spikes anywhere


def test_energy_runs_the_driven_model_by_name(capsys):
    assert main(["energy", "--model", DRIVEN, "--rule", "event", "--prompt", "ROMEO: But soft", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    baselines = report["baselines"]
    assert report["rule"] == "event" and baselines["spiking_off"]["ratio"] > 2
    assert set(baselines) >= {"spiking_off", "equal_bit_int8"}


CARD_FIGURE = r"\| bits per byte(?:, all 111,539 held-out characters)? \| ([0-9.]+) \|"


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare").is_dir(), reason="needs ../shared/data/tinyshakespeare")
@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_held_out_bits_per_byte_match_the_card(name, capsys, tmp_path):
    corpus = SHARED_DATA / "tinyshakespeare" / "input.txt"
    argv = ["eval", "--model", name, "--dataset", str(corpus), "--cache-dir", str(tmp_path), "--batch-size", "16"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    claimed = float(re.search(CARD_FIGURE, (bundled_model_path(name) / "README.md").read_text()).group(1))
    assert result["tokens"] == 111_539  # the whole held-out tail, as the cards say
    assert abs(result["bits_per_byte"] - claimed) < 1e-4, (result["bits_per_byte"], claimed)
