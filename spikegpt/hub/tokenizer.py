"""Tokenizers: loading one, building a character or byte-level BPE vocabulary, the chat template, counting the
characters a vocabulary cannot spell, and incremental detokenization.

Every tokenizer is a ``PreTrainedTokenizerFast`` around a ``tokenizer.json``, so it is saved and loaded with a
checkpoint like any Hugging Face tokenizer, chat template, unknown and pad tokens included. It pads on the left,
as batched generation with a decoder-only model needs (the model skips padded positions exactly).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import TokenizerError

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"  # a character vocabulary's unknown token when it has no end-of-text token to use instead
PAD = "<|pad|>"  # a character vocabulary's pad token when it has no end-of-text token to use instead

# THE chat format of SpikeGPT models: plain text, one turn per paragraph, each turn its speaker's name on a line of
# its own and the text on the next (as a play's script, which the bundled models learned from), ending with the
# assistant's header so that the model writes the reply from its first character (no leading newline):
#
#     System:
#     You are a poet.
#
#     User:
#     Write about the sea.
#
#     Assistant:
#
# Roles print as System (also for "developer"), User, Assistant and Tool; a message's content is a string or a list
# of text parts. Every tokenizer this package makes or loads carries it as its ``chat_template`` (unless it has its
# own), so ``apply_chat_template``, Hugging Face chat pipelines and ``spikegpt serve`` write the same prompt.
CHAT_TEMPLATE = (
    "{%- set names = {'system': 'System', 'developer': 'System', 'user': 'User', 'assistant': 'Assistant', "
    "'tool': 'Tool'} -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- elif message['content'] -%}{%- set text = message['content'] | map(attribute='text') | join('') -%}"
    "{%- else -%}{%- set text = '' -%}{%- endif -%}"
    "{{ '\n\n' if not loop.first else '' }}{{ names[message['role']] }}:\n{{ text | trim }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\n\n' if messages else '' }}{{ 'Assistant:\n' }}{%- endif -%}"
)
# A blank line ends a turn in CHAT_TEMPLATE's format, so the reply ends at its first one (never returned): the end of
# the assistant's paragraph, where a model would otherwise go on to write the next turn. A chat request without
# max_tokens therefore ends there, not at the server's cap.
CHAT_STOP = ("\n\n",)


def _wrap(tokenizer: Tokenizer, pad_token: str | None = None) -> PreTrainedTokenizerFast:
    """As a transformers tokenizer, with ``<|endoftext|>`` as its EOS token when the vocabulary has it, the unknown
    token its model names, ``pad_token`` (default: the EOS token, as GPT-2's users do; the model never reads a
    padded position, so any token serves), left padding and the chat template."""
    eos_token = END_OF_TEXT if tokenizer.token_to_id(END_OF_TEXT) is not None else None
    unk_token = getattr(tokenizer.model, "unk_token", None)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos_token,
        unk_token=unk_token,
        pad_token=pad_token or eos_token,
        padding_side="left",
    )
    fast.model_max_length = 1 << 30  # a recurrent model has no context limit at inference
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _complete(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """What a checkpoint saved before the chat template, the unknown and the pad token needs to behave like a new
    one."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if "padding_side" not in tokenizer.init_kwargs:  # saved before padding was left (and saved with it)
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    for where_it_was_loaded_from in ("is_local", "local_files_only"):  # not settings to save with a checkpoint
        tokenizer.init_kwargs.pop(where_it_was_loaded_from, None)
    model = tokenizer.backend_tokenizer.model
    if _spells_characters(tokenizer) and model.unk_token is None and tokenizer.eos_token is not None:
        # an older character vocabulary dropped unknown characters; its end-of-text token stands in for them now
        model.unk_token = tokenizer.eos_token
        tokenizer.unk_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(source: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A tokenizer from a ``tokenizer.json`` file, a directory holding one, or a Hugging Face Hub id."""
    path = Path(source)
    try:
        if path.is_file():
            return _complete(_wrap(Tokenizer.from_file(str(path))))
        if path.is_dir() and not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"{path} holds no tokenizer.json")
        return _complete(PreTrainedTokenizerFast.from_pretrained(str(source)))
    except TokenizerError:
        raise
    except Exception as e:  # the tokenizers library raises a bare Exception for malformed files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"cannot load a tokenizer from {source}: {first_line}") from e


def char_tokenizer(
    chars: Iterable[str], end_of_text: bool = True, unknown: str | None = "", pad: bool = True
) -> PreTrainedTokenizerFast:
    """A character vocabulary (the original SpikeGPT's enwik8 set-up): token i is the i-th distinct character of
    ``chars`` (pass ``sorted(set(text))`` for a canonical order), then ``<|endoftext|>`` if ``end_of_text``.

    A character outside the vocabulary becomes the unknown token, one per character (never silently dropped). By
    default (``unknown=""``) that is ``<|endoftext|>`` when there is one (GPT-2's convention, which keeps the
    vocabulary at one token past the characters), else an added ``<|unk|>``; ``unknown`` may instead name one of
    ``chars`` (the original's placeholder character), or be None for a vocabulary that must keep its size and has
    no token to spare (unknown characters then get no token: ``may_lose_characters`` is False, so say so).

    The pad token (batches of different lengths) is ``<|endoftext|>`` when there is one; otherwise, with ``pad``,
    an added ``<|pad|>``, and without it (no token to spare) the unknown token, if any: the model never reads a
    padded position, so any token serves."""
    ordered = list(dict.fromkeys(chars))
    if not ordered or any(len(ch) != 1 for ch in ordered):
        raise TokenizerError("a character vocabulary needs at least one character, each a single code point")
    if unknown and unknown not in ordered:
        raise TokenizerError(f"the unknown token {unknown!r} must be one of the vocabulary's characters")
    vocab = {ch: i for i, ch in enumerate(ordered)}
    specials = [END_OF_TEXT] if end_of_text else []
    if unknown == "":
        unknown = END_OF_TEXT if end_of_text else UNKNOWN
        specials = [unknown]
    pad_token = END_OF_TEXT if end_of_text else PAD if pad else unknown
    if pad_token == PAD:
        specials.append(PAD)
    for special in specials:
        vocab[special] = len(vocab)
    # no merges: one token per character; fuse_unk off: one unknown token per unknown character
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unknown, fuse_unk=False))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(specials)
    return _wrap(tokenizer, pad_token)


def _spells_characters(tokenizer: PreTrainedTokenizerFast) -> bool:
    """A vocabulary that spells text character by character from a fixed set (a BPE model without byte-level
    pre-tokenization or byte fallback), so some characters can be outside it."""
    backend = tokenizer.backend_tokenizer
    model = backend.model
    byte_level = "ByteLevel" in type(backend.pre_tokenizer).__name__ if backend.pre_tokenizer is not None else False
    return isinstance(model, models.BPE) and not model.byte_fallback and not byte_level


def unknown_bytes(tokenizer: PreTrainedTokenizerFast, text: str, offsets: list[tuple[int, int]], ids: list[int]):
    """Per token of ``text`` (its ``ids`` and character ``offsets``): the UTF-8 bytes of the character it stands
    for when it is the unknown token, else 0. A literal unknown token in the text counts as known."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return [0] * len(ids)
    return [
        len(text[start:end].encode("utf-8")) if token == unk and text[start:end] != tokenizer.unk_token else 0
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]


def may_lose_characters(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether some characters have no token of their own in this vocabulary: they become the unknown token, or,
    in a vocabulary with no token to spare for them (a converted original that fills its checkpoint), none."""
    return _spells_characters(tokenizer)


def _spelled_characters(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> int:
    """How many characters of the text the tokens ``ids`` stand for (a spelling vocabulary: one per character
    token, a special token's whole text for a special token)."""
    return sum(len(token) for token in tokenizer.convert_ids_to_tokens(ids))


def encode_counting_unknown(
    tokenizer: PreTrainedTokenizerFast, text: str, add_special_tokens: bool = True
) -> tuple[list[int], int]:
    """``text``'s token ids and how many of its characters the vocabulary could not spell: each one an unknown
    token, or, where the vocabulary has no unknown token, a character that got no token at all (counted all the
    same, so that nothing is ever dropped silently)."""
    if not may_lose_characters(tokenizer):
        return tokenizer.encode(text, add_special_tokens=add_special_tokens), 0
    if tokenizer.unk_token_id is None:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        plain = ids if not add_special_tokens else tokenizer.encode(text, add_special_tokens=False)
        return ids, max(0, len(text) - _spelled_characters(tokenizer, plain))
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    return ids, sum(b > 0 for b in unknown_bytes(tokenizer, text, offsets, ids))


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
