"""Tokenizers: loading one, building a character or byte-level BPE vocabulary, and incremental detokenization.

Every tokenizer is a ``PreTrainedTokenizerFast`` around a ``tokenizer.json``, so it is saved and loaded with a
checkpoint like any Hugging Face tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .errors import TokenizerError

END_OF_TEXT = "<|endoftext|>"


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """As a transformers tokenizer, with ``<|endoftext|>`` as its EOS token when the vocabulary has it."""
    eos_token = END_OF_TEXT if tokenizer.token_to_id(END_OF_TEXT) is not None else None
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos_token)
    fast.model_max_length = 1 << 30  # a recurrent model has no context limit at inference
    return fast


def load_tokenizer(source: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A tokenizer from a ``tokenizer.json`` file, a directory holding one, or a Hugging Face Hub id."""
    path = Path(source)
    try:
        if path.is_file():
            return _wrap(Tokenizer.from_file(str(path)))
        if path.is_dir() and not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"{path} holds no tokenizer.json")
        return PreTrainedTokenizerFast.from_pretrained(str(source))
    except TokenizerError:
        raise
    except Exception as e:  # the tokenizers library raises a bare Exception for malformed files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"cannot load a tokenizer from {source}: {first_line}") from e


def char_tokenizer(chars: Iterable[str], end_of_text: bool = True) -> PreTrainedTokenizerFast:
    """A character vocabulary (the original SpikeGPT's enwik8 set-up): token i is the i-th distinct character of
    ``chars`` (pass ``sorted(set(text))`` for a canonical order), then ``<|endoftext|>`` if ``end_of_text``.
    Characters outside the vocabulary are skipped (they get no token)."""
    ordered = list(dict.fromkeys(chars))
    if not ordered or any(len(ch) != 1 for ch in ordered):
        raise TokenizerError("a character vocabulary needs at least one character, each a single code point")
    vocab = {ch: i for i, ch in enumerate(ordered)}
    if end_of_text:
        vocab[END_OF_TEXT] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    tokenizer.decoder = decoders.Fuse()
    if end_of_text:
        tokenizer.add_special_tokens([END_OF_TEXT])
    return _wrap(tokenizer)


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE vocabulary of ``vocab_size`` tokens (``<|endoftext|>`` included) learnt from ``texts``."""
    if vocab_size < 258:
        raise TokenizerError(f"a byte-level BPE vocabulary needs at least 258 tokens, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never emitting half of a UTF-8 character.

    Text is decoded over a short window of recent tokens (so the cost per token stays constant) and emitted only
    once it no longer ends in U+FFFD, the replacement character a decoder yields for an incomplete byte sequence.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens whose text has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it completes (possibly empty)."""
        self.ids.append(int(token_id))
        emitted = self._decode(self.ids[self._prefix : self._read])
        full = self._decode(self.ids[self._prefix :])
        if len(full) <= len(emitted) or full.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return full[len(emitted) :]

    def flush(self) -> str:
        """Whatever is still held back at the end of the sequence (an incomplete character decodes as U+FFFD)."""
        emitted = self._decode(self.ids[self._prefix : self._read])
        full = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return full[len(emitted) :]
