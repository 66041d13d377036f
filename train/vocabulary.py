"""The tokenizer a run trains with: the checkpoint's, a given one, or one learnt from the training text."""

from __future__ import annotations

import logging

from spikegpt.errors import DatasetError
from spikegpt.hub.tokenizer import char_tokenizer, load_tokenizer, train_bpe_tokenizer

from .data import Corpus, iter_texts

logger = logging.getLogger(__name__)

STREAMING_SAMPLE_DOCUMENTS = 10_000  # a streamed corpus is never read whole to learn a vocabulary


def resolve_tokenizer(spec: str | None, init_from: str | None, corpus: Corpus, split: str, vocab_size: int):
    """``spec``: 'char', 'bpe', a tokenizer path or Hub id, or None (the ``init_from`` model's, else 'char')."""
    if spec is None:
        spec = init_from if init_from is not None else "char"
    if spec not in ("char", "bpe"):
        return load_tokenizer(spec)
    limit = STREAMING_SAMPLE_DOCUMENTS if corpus.source.streaming else None
    texts = iter_texts(corpus, split, limit)
    if spec == "char":
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise DatasetError(f"{corpus.source.dataset}: the {split!r} split holds no text to build a vocabulary from")
        tokenizer = char_tokenizer(sorted(chars))
        logger.info("character vocabulary: %d tokens", len(tokenizer))
        return tokenizer
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    logger.info("byte-level BPE vocabulary: %d tokens", len(tokenizer))
    return tokenizer
