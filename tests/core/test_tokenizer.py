"""Tokenizers: character and byte-level BPE vocabularies, loading, and incremental detokenization."""

from __future__ import annotations

import pytest

from spikegpt.errors import TokenizerError
from spikegpt.tokenizer import END_OF_TEXT, IncrementalDetokenizer, char_tokenizer, load_tokenizer, train_bpe_tokenizer

TEXT = "Héllo wörld — naïve café, 東京 and 🙂 emoji.\nSecond line."


def test_char_tokenizer_round_trips_and_skips_unknown_characters():
    tokenizer = char_tokenizer(sorted(set("hello world\n")))
    assert tokenizer.decode(tokenizer.encode("hello\nworld")) == "hello\nworld"
    assert tokenizer.decode(tokenizer.encode("hellö")) == "hell"
    assert tokenizer.eos_token == END_OF_TEXT and tokenizer.eos_token_id == len(tokenizer) - 1
    assert len(char_tokenizer("abc", end_of_text=False)) == 3


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
