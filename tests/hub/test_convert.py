"""Original SpikeGPT checkpoints convert into Hugging Face directories that compute what the original computes."""

from __future__ import annotations

import collections
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from spikegpt.errors import CheckpointError
from spikegpt.hub.convert import ConversionOptions, convert_checkpoint


def original_state_dict(vocab: int, n_layer: int, d: int, ffn_pre: bool = False, seed: int = 0) -> dict:
    """A random checkpoint in the original training code's key format, with weights lively enough to spike."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def channel_mix(prefix):
        return {
            f"{prefix}.time_mix_k": torch.rand(1, 1, d, generator=g),
            f"{prefix}.time_mix_r": torch.rand(1, 1, d, generator=g),
            f"{prefix}.key.weight": rand(4 * d, d, scale=2 / math.sqrt(d)),
            f"{prefix}.receptance.weight": rand(d, d, scale=2 / math.sqrt(d)),
            f"{prefix}.value.weight": rand(d, 4 * d, scale=2 / math.sqrt(4 * d)),
        }

    sd = {"emb.weight": rand(vocab, d), "ln_out.weight": 1 + rand(d, scale=0.1), "ln_out.bias": rand(d, scale=0.1)}
    sd["head.weight"] = rand(vocab, d, scale=1 / math.sqrt(d))
    for i in range(n_layer):
        b = f"blocks.{i}"
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            sd[f"{b}.{ln}.weight"] = 1 + rand(d, scale=0.1)
            sd[f"{b}.{ln}.bias"] = rand(d, scale=0.1)
        if i == 0 and ffn_pre:
            sd.update(channel_mix(f"{b}.ffnPre"))
        else:
            sd[f"{b}.att.time_decay"] = rand(d)
            sd[f"{b}.att.time_first"] = rand(d)
            for m in "kvr":
                sd[f"{b}.att.time_mix_{m}"] = torch.rand(1, 1, d, generator=g)
            for name in ("key", "value", "receptance", "output"):
                sd[f"{b}.att.{name}.weight"] = rand(d, d, scale=2 / math.sqrt(d))
        sd.update(channel_mix(f"{b}.ffn"))
    return sd


def model_run_logits(sd: dict, tokens: list[int], binary_embedding: bool, rescale_layer: int) -> torch.Tensor:
    """An independent float64 re-statement of the original RNN inference (src/model_run.py): one token at a time,
    matrix-vector products, the stable WKV step, single-step LIF neurons (tau 2, threshold 1, hard reset), and its
    RWKV_RESCALE_LAYER weight division and halving."""
    w = {k: v.double().squeeze() if ".time_" in k else v.double() for k, v in sd.items()}
    n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    d = w["emb.weight"].shape[1]
    for i in range(n_layer):
        for key in (f"blocks.{i}.att.output.weight", f"blocks.{i}.ffn.value.weight"):
            w[key] = w[key] / 2 ** (i // rescale_layer)

    def ln(x, name):
        return F.layer_norm(x, (d,), w[f"{name}.weight"], w[f"{name}.bias"])

    state = collections.defaultdict(lambda: torch.zeros(d, dtype=torch.float64))
    for i in range(n_layer):
        state[f"pp{i}"] = torch.full((d,), -1e30, dtype=torch.float64)
    logits = []
    for token in tokens:
        x = w["emb.weight"][token]
        if binary_embedding:
            x = (x >= 0).double()
        for i in range(n_layer):
            a, f = f"blocks.{i}.att", f"blocks.{i}.ffn"
            if i == 0:
                x = ln(x, "blocks.0.ln0")
            xx = ln(x, f"blocks.{i}.ln1")
            xk = xx * w[f"{a}.time_mix_k"] + state[f"att{i}"] * (1 - w[f"{a}.time_mix_k"])
            xv = xx * w[f"{a}.time_mix_v"] + state[f"att{i}"] * (1 - w[f"{a}.time_mix_v"])
            xr = xx * w[f"{a}.time_mix_r"] + state[f"att{i}"] * (1 - w[f"{a}.time_mix_r"])
            state[f"att{i}"] = xx
            r = torch.sigmoid(w[f"{a}.receptance.weight"] @ xr)
            k, v = w[f"{a}.key.weight"] @ xk, w[f"{a}.value.weight"] @ xv
            aa, bb, pp = state[f"aa{i}"], state[f"bb{i}"], state[f"pp{i}"]
            u, decay = w[f"{a}.time_first"], -torch.exp(w[f"{a}.time_decay"])
            p = torch.maximum(pp, u + k)
            e1, e2 = torch.exp(pp - p), torch.exp(u + k - p)
            wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
            p = torch.maximum(pp + decay, k)
            e1, e2 = torch.exp(pp + decay - p), torch.exp(k - p)
            state[f"aa{i}"], state[f"bb{i}"], state[f"pp{i}"] = e1 * aa + e2 * v, e1 * bb + e2, p
            x = x + lif_step(state, f"mem1_{i}", w[f"{a}.output.weight"] @ (r * wkv))
            xx = ln(x, f"blocks.{i}.ln2")
            xk = xx * w[f"{f}.time_mix_k"] + state[f"ffn{i}"] * (1 - w[f"{f}.time_mix_k"])
            xr = xx * w[f"{f}.time_mix_r"] + state[f"ffn{i}"] * (1 - w[f"{f}.time_mix_r"])
            state[f"ffn{i}"] = xx
            kv = w[f"{f}.value.weight"] @ torch.relu(w[f"{f}.key.weight"] @ xk) ** 2
            x = x + lif_step(state, f"mem2_{i}", torch.sigmoid(w[f"{f}.receptance.weight"] @ xr) * kv)
            if (i + 1) % rescale_layer == 0:
                x = x / 2
        logits.append(w["head.weight"] @ ln(x, "ln_out"))
    return torch.stack(logits)


def lif_step(state, name, x):
    v = state[name] + (x - state[name]) / 2.0
    spike = (v >= 1.0).double()
    state[name] = v * (1 - spike)
    return spike


def converted_logits(sd, tmp_path, tokens, **options):
    torch.save(sd, tmp_path / "original.pth")
    convert_checkpoint(tmp_path / "original.pth", tmp_path / "hf", ConversionOptions(**options))
    import spikegpt  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").double().eval()
    state, logits = model.fresh_state(1), []
    for token in tokens:  # token by token, like the original RNN
        out = model(torch.tensor([[token]]), state=state)
        state = out.state
        logits.append(out.logits[0, -1])
    return torch.stack(logits), model.config


@pytest.mark.parametrize(
    "vocab, n_layer, match_model_run, binary, rescale",
    [
        (77, 2, False, True, 6),  # model_run's semantics equal training's here
        (77, 7, True, True, 6),  # rescaling acts from layer 6 on
        (50, 3, True, False, 6),  # model_run's float embedding for other vocabularies
    ],
    ids=["vocab77-training", "vocab77-rescaled", "vocab50-float-embedding"],
)
def test_converted_model_matches_original_inference(tmp_path, seed, vocab, n_layer, match_model_run, binary, rescale):
    sd = original_state_dict(vocab, n_layer, 16, seed=seed)
    tokens = torch.randint(0, vocab, (20,)).tolist()
    ours, config = converted_logits(sd, tmp_path, tokens, match_model_run=match_model_run)
    assert (config.vocab_size, config.n_layer, config.n_embd, config.ffn_hidden) == (vocab, n_layer, 16, 64)
    torch.testing.assert_close(ours, model_run_logits(sd, tokens, binary, rescale), rtol=1e-9, atol=1e-9)


def test_ffn_pre_checkpoint_gives_our_models_logits(tmp_path, seed):
    """model_run.py has no ffnPre path, so compare with our own model holding the same weights."""
    sd = original_state_dict(60, 2, 16, ffn_pre=True, seed=seed)
    tokens = torch.randint(0, 60, (12,))
    torch.save(sd, tmp_path / "original.pth")
    config = convert_checkpoint(tmp_path / "original.pth", tmp_path / "hf")
    assert config.ffn_pre
    from spikegpt import SpikeGPTForCausalLM

    direct = SpikeGPTForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in direct.named_parameters():
            key = name.removeprefix("model.").replace("ffn_pre", "ffnPre")
            param.copy_(sd[key].reshape(param.shape))
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(converted(tokens[None]).logits, direct(tokens[None]).logits)


def test_char_vocabulary_file_becomes_the_tokenizer(tmp_path):
    chars = ["\n", " ", *"abcdefghij"]
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(str({str(i): c for i, c in enumerate(chars)}).replace("'", '"'), encoding="utf-16")
    torch.save(original_state_dict(len(chars), 1, 8), tmp_path / "original.pth")
    convert_checkpoint(tmp_path / "original.pth", tmp_path / "hf", ConversionOptions(char_vocab=str(vocab_file)))
    from spikegpt.hub.checkpoint import load_model

    _, tokenizer = load_model(tmp_path / "hf")
    assert tokenizer.encode("a b\n") == [2, 1, 3, 0]


def test_the_originals_unknown_character_stands_for_characters_outside_its_vocabulary(tmp_path):
    """The original reads a character it lacks as U+E083, which its vocabularies hold: so does the conversion."""
    chars = ["\n", " ", "\ue083", *"abc"]
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps({str(i): c for i, c in enumerate(chars)}), encoding="utf-16")
    torch.save(original_state_dict(len(chars), 1, 8), tmp_path / "original.pth")
    convert_checkpoint(tmp_path / "original.pth", tmp_path / "hf", ConversionOptions(char_vocab=str(vocab_file)))
    from spikegpt.hub.checkpoint import load_model
    from spikegpt.hub.tokenizer import encode_counting_unknown

    _, tokenizer = load_model(tmp_path / "hf")
    assert encode_counting_unknown(tokenizer, "a é\n") == ([3, 1, 2, 0], 1)


def test_a_full_vocabulary_without_a_placeholder_counts_the_characters_it_cannot_spell(tmp_path, capsys):
    """A vocabulary that fills the checkpoint and lacks U+E083 has no token for a character outside it: the
    character is counted (usage field, CLI warning), never dropped silently."""
    chars = ["\n", " ", *"abcelo"]
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps({str(i): c for i, c in enumerate(chars)}), encoding="utf-16")
    torch.save(original_state_dict(len(chars), 1, 8), tmp_path / "original.pth")
    convert_checkpoint(tmp_path / "original.pth", tmp_path / "hf", ConversionOptions(char_vocab=str(vocab_file)))
    from spikegpt.cli import main
    from spikegpt.hub.checkpoint import load_model
    from spikegpt.hub.tokenizer import encode_counting_unknown

    _, tokenizer = load_model(tmp_path / "hf")
    assert len(tokenizer) == len(chars) and tokenizer.unk_token_id is None
    assert encode_counting_unknown(tokenizer, "Hello") == (tokenizer.encode("ello"), 1)
    assert encode_counting_unknown(tokenizer, "HELLO, a") == (tokenizer.encode(" a"), 6)
    capsys.readouterr()
    argv = ["generate", "--model", str(tmp_path / "hf"), "--prompt", "Hello", "--max-new-tokens", "2", "--seed", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: 1 characters of the prompt are outside the model's vocabulary" in err
    assert "[prompt 4 tokens" in err


class NotATensor:
    pass


def corrupt(kind: str, path, sd):
    if kind == "truncated":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not-a-checkpoint":
        path.write_bytes(b"definitely not a checkpoint" * 10)
    elif kind == "unsafe-pickle":
        torch.save({"emb.weight": NotATensor()}, path)
    elif kind == "missing-key":
        torch.save({k: v for k, v in sd.items() if k != "blocks.1.att.key.weight"}, path)
    elif kind == "wrong-shape":
        torch.save({**sd, "blocks.0.ffn.value.weight": torch.zeros(8, 8)}, path)
    elif kind == "extra-key":
        torch.save({**sd, "blocks.0.att.mystery": torch.zeros(8)}, path)
    elif kind == "missing-block":
        torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "not a readable PyTorch checkpoint"),
        ("not-a-checkpoint", "not a PyTorch checkpoint"),
        ("unsafe-pickle", "refused to unpickle it"),
        ("missing-key", "missing tensor blocks.1.att.key.weight"),
        ("wrong-shape", r"blocks.0.ffn.value.weight has shape \(8, 8\), expected \(8, 32\)"),
        ("extra-key", "unexpected tensors .*blocks.0.att.mystery"),
        ("missing-block", r"blocks \[1\] are missing"),
    ],
)
def test_bad_checkpoints_fail_with_a_clear_message(tmp_path, kind, message):
    path = tmp_path / "bad.pth"
    corrupt(kind, path, original_state_dict(30, 3, 8))
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed conversion must leave no output directory"


def test_cli_converts_and_reports_errors_in_one_line(tmp_path):
    torch.save(original_state_dict(30, 2, 8), tmp_path / "original.pth")
    ok = subprocess.run(
        [sys.executable, "-m", "spikegpt.cli", "convert", str(tmp_path / "original.pth"), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "spikegpt.cli", "convert", str(tmp_path / "original.pth"), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("spikegpt convert: error:")
    assert "not empty" in again.stderr


@pytest.mark.parametrize(
    "spare, placeholder, pad",
    [(2, False, "<|pad|>"), (1, False, "<|unk|>"), (1, True, "<|pad|>"), (0, True, "\ue083"), (0, False, None)],
    ids=["room-for-unk-and-pad", "room-for-unk", "placeholder-and-room", "placeholder-full", "full"],
)
def test_a_converted_vocabulary_pads_within_the_checkpoints_size(tmp_path, spare, placeholder, pad):
    """An added ``<|pad|>`` only where the checkpoint has a token to spare, else the unknown token: the vocabulary
    never outgrows the embedding; config.json names the pad token."""
    chars = ["\n", " ", *"abc", *(["\ue083"] if placeholder else [])]
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps({str(i): c for i, c in enumerate(chars)}), encoding="utf-16")
    torch.save(original_state_dict(len(chars) + spare, 1, 8), tmp_path / "original.pth")
    config = convert_checkpoint(
        tmp_path / "original.pth", tmp_path / "hf", ConversionOptions(char_vocab=str(vocab_file))
    )
    from spikegpt.hub.checkpoint import load_model

    model, tokenizer = load_model(tmp_path / "hf")
    assert tokenizer.pad_token == pad and len(tokenizer) <= config.vocab_size == len(chars) + spare
    assert model.config.pad_token_id == config.pad_token_id == tokenizer.pad_token_id
