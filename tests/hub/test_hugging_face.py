"""Hugging Face integration: Auto classes, save/load round trips, generate() with the recurrent state as cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ALPHABET, lively_weights_, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTModel
from spikegpt.errors import CheckpointError
from spikegpt.hub.checkpoint import load_model


def test_save_then_from_pretrained_gives_identical_logits(tmp_path, seed):
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(ffn_pre=True, lif_reset="soft")), seed).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "spikegpt"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SpikeGPTForCausalLM)
    assert loaded.config.ffn_pre and loaded.config.lif_reset == "soft"
    ids = torch.randint(0, model.config.vocab_size, (2, 13))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_auto_classes_know_spikegpt(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SpikeGPTConfig)
    assert isinstance(AutoModel.from_config(config), SpikeGPTModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), SpikeGPTForCausalLM)


def test_tokenizer_travels_with_the_checkpoint(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Hello, world!\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    model, loaded_tokenizer = load_model(tiny_model_dir)
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert len(loaded_tokenizer) == len(ALPHABET) + 1 == model.config.vocab_size


def manual_loop(model, prompt, steps, pick):
    out = model(prompt, use_cache=True)
    tokens = []
    for _ in range(steps):
        token = pick(out.logits[:, -1])
        tokens.append(token)
        out = model(token, state=out.state)
    return torch.cat([prompt, *tokens], dim=1)


def test_greedy_generate_equals_manual_loop(seed):
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 6))
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False)
    expected = manual_loop(model, prompt, 12, lambda logits: logits.argmax(-1, keepdim=True))
    assert torch.equal(generated, expected)


def test_sampling_generate_equals_manual_loop(seed):
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 4))
    torch.manual_seed(seed)
    generated = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    torch.manual_seed(seed)
    expected = manual_loop(
        model, prompt, 10, lambda logits: torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)
    )
    assert torch.equal(generated, expected)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such model directory"),
        (lambda p: p.mkdir(), "no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{not json")), "not valid JSON"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text('{"model_type": "gpt2"}')), "not a SpikeGPT"),
    ],
    ids=["missing", "empty", "bad-json", "other-model"],
)
def test_load_model_rejects_bad_directories(tmp_path, make, message):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_load_model_rejects_truncated_weights(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        data = item.read_bytes()
        (broken / item.name).write_bytes(data[: len(data) // 2] if item.name == "model.safetensors" else data)
    with pytest.raises(CheckpointError, match="cannot load"):
        load_model(broken)


def test_a_hub_id_loads_from_the_hub_cache(tmp_path, tiny_model_dir):
    """The Hub cannot be reached here, so the Hub id resolves through a local Hugging Face cache laid out as the Hub
    client writes it (HF_HUB_OFFLINE=1): the same from_pretrained code path, minus the download."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-spikegpt"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for item in tiny_model_dir.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    script = (
        "from spikegpt.hub.checkpoint import load_model, weight_files\n"
        "model, tokenizer = load_model('someone/tiny-spikegpt')\n"
        "print(type(model).__name__, model.config.n_layer, len(tokenizer))\n"
        "print(*(path.relative_to(path.parents[2]) for path in weight_files('someone/tiny-spikegpt')))\n"
        "try:\n"
        "    load_model('someone/not-there')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    # the weights checked for finite floats are the cached files the model was loaded from
    weights = f"snapshots/{revision}/model.safetensors"
    assert result.stdout.split() == ["SpikeGPTForCausalLM", "2", str(len(ALPHABET) + 1), weights, "CheckpointError"]


def true_log_probability(model, sequence: torch.Tensor, prompt_len: int, eos: int | None) -> float:
    """log p(generated tokens | prompt) from one parallel forward over the whole sequence, up to the first EOS."""
    generated = sequence[prompt_len:].tolist()
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos) + 1]
    ids = sequence[: prompt_len + len(generated)][None]
    logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(float(logprobs[prompt_len - 1 + i, t]) for i, t in enumerate(generated))


@pytest.mark.parametrize("num_beams, max_new_tokens", [(2, 1), (2, 12), (3, 7), (4, 16)])
@torch.no_grad()
def test_beam_search_scores_are_the_true_log_probabilities(seed, num_beams, max_new_tokens):
    """The state follows the beams: every returned beam's score is the log-probability a forward pass over its
    text gives (length_penalty 0: the plain sum), so no beam read another beam's history."""
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(eos_token_id=0)), seed).eval()
    prompt = torch.randint(1, model.config.vocab_size, (1, 5))
    out = model.generate(
        prompt,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        length_penalty=0.0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    for sequence, score in zip(out.sequences, out.sequences_scores, strict=True):
        expected = true_log_probability(model, sequence, prompt.shape[1], eos=0)
        # float32 logits summed over up to 16 steps: the tolerance is that of the two forms' equality
        assert float(score) == pytest.approx(expected, abs=1e-4), (sequence.tolist(), float(score), expected)


@torch.no_grad()
def test_one_beam_is_greedy(seed):
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 6))
    beam = model.generate(prompt, num_beams=1, max_new_tokens=10, do_sample=False)
    assert torch.equal(beam, manual_loop(model, prompt, 10, lambda logits: logits.argmax(-1, keepdim=True)))


@torch.no_grad()
def test_generate_decodes_through_the_traced_step_bit_for_bit(seed):
    """generate() decodes with the traced recurrent step (the engine's, for its speed); its logits are the eager
    forward's exactly."""
    from spikegpt.runtime.step import _GENERATE_STEPS

    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert list(_GENERATE_STEPS[model][1]) == [(2, prompt.device, torch.float32, None)]
    eager = model(prompt, use_cache=True, logits_to_keep=1)  # as generate() reads the prompt
    for step, logits in enumerate(out.logits):
        assert torch.equal(logits, eager.logits[:, -1].float()), step
        token = out.sequences[:, prompt.shape[1] + step : prompt.shape[1] + step + 1]
        eager = model(token, state=eager.state)
