"""Tokenizers: character and byte-level BPE vocabularies, loading, and incremental detokenization."""

from __future__ import annotations

import json

import pytest
from conftest import ALPHABET
from transformers import AutoTokenizer

from spikegpt.errors import TokenizerError
from spikegpt.hub.checkpoint import BUNDLED_MODELS, bundled_model_path
from spikegpt.hub.tokenizer import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    PAD,
    UNKNOWN,
    IncrementalDetokenizer,
    char_tokenizer,
    encode_counting_unknown,
    load_tokenizer,
    may_lose_characters,
    train_bpe_tokenizer,
    unknown_bytes,
)

TEXT = "Héllo wörld — naïve café, 東京 and 🙂 emoji.\nSecond line."


def test_char_tokenizer_round_trips_and_marks_unknown_characters():
    tokenizer = char_tokenizer(sorted(set("hello world\n")))
    assert tokenizer.decode(tokenizer.encode("hello\nworld")) == "hello\nworld"
    assert tokenizer.eos_token == END_OF_TEXT and tokenizer.eos_token_id == len(tokenizer) - 1
    # one unknown token per character outside the vocabulary, never a silent gap: the end-of-text token here
    ids, unknown = encode_counting_unknown(tokenizer, "hellö wörld, 東京")
    assert tokenizer.unk_token == END_OF_TEXT and ids.count(tokenizer.unk_token_id) == unknown == 5  # ö ö , 東 京
    assert len(ids) == len("hellö wörld, 東京")
    # a literal end-of-text token in the text is that token, not an unknown character
    assert encode_counting_unknown(tokenizer, "hello" + END_OF_TEXT) == (tokenizer.encode("hello" + END_OF_TEXT), 0)
    without_eos = char_tokenizer("abc", end_of_text=False)
    assert len(without_eos) == 5 and without_eos.unk_token == UNKNOWN and without_eos.pad_token == PAD
    assert encode_counting_unknown(without_eos, "abxc") == ([0, 1, 3, 2], 1)


def test_unknown_bytes_count_every_byte_of_the_lost_characters():
    tokenizer = char_tokenizer("In the cf")
    text = "In 1990 the café 🙂"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    counts = unknown_bytes(tokenizer, text, encoded["offset_mapping"], encoded["input_ids"])
    assert sum(counts) == len(b"1990") + len("aé".encode()) + len("🙂".encode())
    assert len(text.encode()) == sum(counts) + len(
        tokenizer.decode([i for i, c in zip(encoded["input_ids"], counts, strict=True) if not c])
    )


def test_an_older_character_vocabulary_gains_an_unknown_token_and_the_chat_template(tmp_path):
    """A tokenizer.json saved before this package wrote unknown tokens (BPE with unk_token null) dropped unknown
    characters; loaded now it maps them to its end-of-text token and carries the chat template."""
    old = char_tokenizer("abc")
    raw = json.loads(old.backend_tokenizer.to_str())
    raw["model"]["unk_token"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.chat_template == CHAT_TEMPLATE
    assert encode_counting_unknown(loaded, "abxc") == ([0, 1, 3, 2], 1)


def test_every_tokenizer_pads_on_the_left_with_a_pad_token(tmp_path):
    """The end-of-text token where the vocabulary has one (GPT-2's convention: no new token), else an added
    ``<|pad|>``, else (no token to spare) the unknown token; saved with the tokenizer, left padding included."""
    cases = {
        "end-of-text": (char_tokenizer("abc"), END_OF_TEXT, 4),
        "added": (char_tokenizer("abc", end_of_text=False), PAD, 5),
        "no-room": (char_tokenizer("abc", end_of_text=False, pad=False), UNKNOWN, 4),
        "bpe": (train_bpe_tokenizer(iter([TEXT] * 5), vocab_size=270), END_OF_TEXT, 270),
    }
    for name, (tokenizer, pad, size) in cases.items():
        tokenizer.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        assert (loaded.pad_token, loaded.padding_side, len(loaded)) == (pad, "left", size), name
        batch = loaded(["ab", "abcab"], padding=True)
        assert batch["input_ids"][0][:3] == [loaded.pad_token_id] * 3 and batch["attention_mask"][0] == [0, 0, 0, 1, 1]
    assert char_tokenizer("abc", end_of_text=False, unknown=None, pad=False).pad_token is None  # nothing to spare


def test_an_older_tokenizer_gains_its_end_of_text_token_as_pad_token(tmp_path):
    """A checkpoint saved before tokenizers had a pad token: loaded now, it pads on the left with its EOS token."""
    char_tokenizer("abc").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["pad_token"], config["padding_side"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_tokenizer(tmp_path)
    assert (loaded.pad_token, loaded.padding_side) == (END_OF_TEXT, "left")
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_byte_level_vocabularies_lose_nothing():
    tokenizer = train_bpe_tokenizer(iter([TEXT] * 5), vocab_size=270)
    assert not may_lose_characters(tokenizer)
    assert encode_counting_unknown(tokenizer, TEXT) == (tokenizer.encode(TEXT), 0)


def test_the_chat_template_writes_the_plain_format():
    tokenizer = char_tokenizer(ALPHABET)
    messages = [
        {"role": "system", "content": "  You are a poet. "},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Write "}, {"type": "text", "text": "about the sea."}]},
        {"role": "assistant", "content": "Waves."},
        {"role": "tool", "content": "42"},
        {"role": "user", "content": None},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "System:\nYou are a poet.\n\nSystem:\nBe brief.\n\nUser:\nWrite about the sea.\n\nAssistant:\nWaves.\n\n"
        "Tool:\n42\n\nUser:\n\n\nAssistant:\n"
    )
    assert tokenizer.apply_chat_template(messages[:1], tokenize=False) == "System:\nYou are a poet."


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_the_bundled_models_carry_the_current_chat_template(name):
    """A bundled tokenizer keeps the chat template it was saved with, and the server renders the tokenizer's own
    template (with the format's stop rule only when it is CHAT_TEMPLATE): a bundled copy left behind by a change of
    the format would serve the old prompt and run every chat to the cap."""
    tokenizer = load_tokenizer(bundled_model_path(name))
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_bpe_tokenizer_learns_and_round_trips_any_text(tmp_path):
    tokenizer = train_bpe_tokenizer(iter([TEXT] * 20), vocab_size=300)
    ids = tokenizer.encode(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges were learnt
    assert tokenizer.decode(ids) == TEXT
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).encode(TEXT) == ids
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(TEXT) == ids


def test_incremental_detokenizer_never_splits_a_character():
    tokenizer = train_bpe_tokenizer(iter(["abc"] * 5), vocab_size=260)  # few merges: multi-byte chars span tokens
    ids = tokenizer.encode(TEXT)
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces), "some tokens hold only part of a character"


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing.json"], ids=["no-tokenizer-json", "no-file"])
def test_loading_a_missing_tokenizer_is_a_tokenizer_error(tmp_path, make):
    with pytest.raises(TokenizerError):
        load_tokenizer(make(tmp_path))


def test_loading_a_corrupt_tokenizer_is_a_tokenizer_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path / "tokenizer.json")
