"""Text → token blocks: ``datasets.load_dataset`` (a Hub name or local files), tokenization, packing.

Every dataset goes through ``datasets.load_dataset``: a Hub name as it is, local files through the packaged
``text``, ``json`` or ``parquet`` builders. Documents are tokenized in a batched, cached ``map``, concatenated
(separated by the tokenizer's end-of-text token, except for plain text files, whose lines are the file's own
text) and packed into blocks of ``ctx_len + 1`` tokens with a stride of ``ctx_len``: block i holds inputs
``t[i·ctx_len : (i+1)·ctx_len]`` and their next tokens, so every token after the first is a target exactly once;
the last, shorter block is padded with ``PAD``. Padding is never fed to the model: evaluation reads that block cut
to its length, training leaves it out (fewer than ``ctx_len`` tokens).

A character vocabulary turns characters it lacks into its unknown token; tokenization then also records, per
token, the UTF-8 bytes of the character an unknown token stands for (``unknown_bytes``), so that evaluation counts
every byte of the text and training says how much of it the vocabulary cannot spell.
"""

from __future__ import annotations

import glob
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikegpt.errors import DatasetError
from spikegpt.hub.tokenizer import may_lose_characters, unknown_bytes
from spikegpt.modeling.model import IGNORE_INDEX
from spikegpt.progress import on_terminal

logger = logging.getLogger(__name__)

PAD = IGNORE_INDEX  # the label value the model's loss ignores; never fed to the model as an input
BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataSource:
    """Where text comes from: ``dataset`` is a Hub name or a local file, directory or glob."""

    dataset: str
    dataset_config: str | None = None
    text_field: str = "text"
    cache_dir: str | None = None
    streaming: bool = False


@dataclass
class Corpus:
    """The loaded splits (``datasets.Dataset``, or ``IterableDataset`` when streaming) and how to join documents."""

    source: DataSource
    splits: dict[str, Any]
    plain_text: bool  # local text files: rows are lines of one text, joined without separators

    def split(self, name: str):
        if name not in self.splits:
            raise DatasetError(
                f"{self.source.dataset} has no split {name!r} (splits: {', '.join(self.splits)}); choose one of them"
            )
        return self.splits[name]


def _local_files(spec: str) -> list[str] | None:
    """The files a local spec names (a file, a directory's files, a glob), or None when it is not local."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
        if not files:
            raise DatasetError(f"{spec}: the directory holds no {'/'.join(sorted(BUILDERS))} files")
        return files
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
        if not files:
            raise DatasetError(f"{spec}: no file matches this pattern")
        return files
    if spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in BUILDERS:
        raise DatasetError(f"{spec}: no such file or directory")
    return None


def _builder_for(files: list[str]) -> str:
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds:
        odd = next(f for f in files if Path(f).suffix.lower() not in BUILDERS)
        raise DatasetError(f"{odd}: unknown file type; use {', '.join(sorted(BUILDERS))} files")
    if len(kinds) > 1:
        raise DatasetError(f"mixed file types ({', '.join(sorted(kinds))}); give files of one kind")
    return kinds.pop()


def load_corpus(source: DataSource) -> Corpus:
    """All splits of ``source``; raises ``DatasetError`` with what to do when it cannot be loaded."""
    import datasets

    if not on_terminal():  # datasets' bars (generating splits, tokenizing) are cursor codes in a log
        datasets.disable_progress_bars()
    files = _local_files(source.dataset)
    if files is not None and all(Path(f).stat().st_size == 0 for f in files):
        raise DatasetError(f"{source.dataset}: empty; it holds no text to train on")
    common = dict(cache_dir=source.cache_dir, streaming=source.streaming)
    try:
        if files is not None:
            builder = _builder_for(files)
            extra = {"keep_linebreaks": True} if builder == "text" else {}
            folder = Path(source.dataset).expanduser()
            # a directory's file names give its splits (train.jsonl, validation.jsonl, ...), as on the Hub
            where = {"data_dir": str(folder)} if folder.is_dir() else {"data_files": {"train": files}}
            loaded = datasets.load_dataset(builder, **where, **common, **extra)
        else:
            builder = None
            loaded = datasets.load_dataset(source.dataset, source.dataset_config, **common)
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError...)
        root = e
        while root.__cause__ is not None:  # "An error occurred while generating the dataset" wraps the reason
            root = root.__cause__
        message = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        hint = "" if files is not None else " (a Hub name needs network access; or pass a local file)"
        raise DatasetError(f"cannot load dataset {source.dataset!r}: {message}{hint}") from e
    return Corpus(source=source, splits=dict(loaded), plain_text=builder == "text")


def _check_text_field(corpus: Corpus, split) -> None:
    columns = split.column_names
    if columns is not None and corpus.source.text_field not in columns:
        raise DatasetError(
            f"{corpus.source.dataset}: no {corpus.source.text_field!r} field (fields: {', '.join(columns)}); "
            "name the text field with --text-field"
        )


def iter_texts(corpus: Corpus, split_name: str, limit: int | None = None) -> Iterator[str]:
    """The documents of a split as strings (the first ``limit`` ones when given)."""
    split = corpus.split(split_name)
    _check_text_field(corpus, split)
    rows = split.select_columns([corpus.source.text_field])
    texts = (row[corpus.source.text_field] or "" for row in rows)
    return itertools.islice(texts, limit) if limit is not None else texts


def _separator(corpus: Corpus, tokenizer) -> list[int]:
    if corpus.plain_text or tokenizer.eos_token_id is None:
        return []
    return [tokenizer.eos_token_id]


UNKNOWN_BYTES = "unknown_bytes"  # the column of per-token unknown bytes


def _encode(tokenizer, texts: list[str], separator: list[int]) -> dict[str, list]:
    """Token ids per text, each followed by ``separator``; with ``unknown_bytes`` (aligned with them) when the
    vocabulary can lack characters."""
    if not may_lose_characters(tokenizer):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + separator for row in ids]}
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows = zip(texts, encoded["offset_mapping"], encoded["input_ids"], strict=True)
    return {
        "input_ids": [ids + separator for ids in encoded["input_ids"]],
        UNKNOWN_BYTES: [unknown_bytes(tokenizer, t, o, i) + [0] * len(separator) for t, o, i in rows],
    }


def tokenize_split(corpus: Corpus, split_name: str, tokenizer):
    """The split with an ``input_ids`` column, and ``unknown_bytes`` for vocabularies that can lack characters
    (batched ``map``, cached by ``datasets`` beside the data)."""
    split = corpus.split(split_name)
    _check_text_field(corpus, split)
    field, separator = corpus.source.text_field, _separator(corpus, tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return _encode(tokenizer, [text or "" for text in batch[field]], separator)

    kwargs = {} if corpus.source.streaming else {"desc": f"tokenizing {split_name}"}
    return split.map(encode, batched=True, remove_columns=split.column_names, **kwargs)


def token_stream(tokenized, column: str = "input_ids") -> np.ndarray | None:
    """A column of a tokenized (map-style) split, concatenated, as int32; None when the split lacks it."""
    if column not in tokenized.column_names:
        return None
    data = tokenized.data.column(column)
    flat = data.combine_chunks().flatten() if data.num_chunks else data
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int32)


@dataclass
class Tokens:
    """A token stream and, for a vocabulary that can lack characters, its ``unknown_bytes`` (aligned)."""

    ids: np.ndarray
    unknown: np.ndarray | None = None

    @classmethod
    def of(cls, tokenized) -> Tokens:
        return cls(token_stream(tokenized), token_stream(tokenized, UNKNOWN_BYTES))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> Tokens:
        return Tokens(self.ids[part], None if self.unknown is None else self.unknown[part])

    def packed(self, ctx_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``pack`` of the ids and, aligned with them, of the unknown bytes."""
        return pack(self.ids, ctx_len), None if self.unknown is None else pack(self.unknown, ctx_len)


def warn_unknown_characters(tokens: Tokens, what: str) -> None:
    """Say once, with their share, that some characters of the text are outside the vocabulary."""
    if tokens.unknown is None or not len(tokens):
        return
    unknown = int(np.count_nonzero(tokens.unknown))
    if unknown:
        logger.warning(
            "%s: %d characters (%.2f%% of %d tokens) are outside the vocabulary and become its unknown token",
            what,
            unknown,
            100 * unknown / len(tokens),
            len(tokens),
        )


def pack(stream: np.ndarray, ctx_len: int) -> np.ndarray:
    """``[n_blocks, ctx_len + 1]`` blocks with stride ``ctx_len``; the last is padded with ``PAD``.

    Every token of ``stream`` but the first is the target of exactly one position."""
    if len(stream) < 2:
        return np.empty((0, ctx_len + 1), dtype=np.int32)
    n_blocks = -(-(len(stream) - 1) // ctx_len)
    padded = np.full(n_blocks * ctx_len + 1, PAD, dtype=np.int32)
    padded[: len(stream)] = stream
    starts = np.arange(n_blocks)[:, None] * ctx_len
    return padded[starts + np.arange(ctx_len + 1)[None, :]]


@dataclass
class SplitStreams:
    train: Tokens
    validation: Tokens | None


def split_streams(corpus: Corpus, tokenizer, train_split: str, validation_split: str, fraction: float) -> SplitStreams:
    """Token streams of the training and validation splits; without a validation split, the last ``fraction`` of
    the training tokens is held out (contiguous, so no text is shared across the cut)."""
    train = Tokens.of(tokenize_split(corpus, train_split, tokenizer))
    if len(train) < 2:
        raise DatasetError(f"{corpus.source.dataset}: the {train_split!r} split holds no text to train on")
    if validation_split in corpus.splits:
        validation = Tokens.of(tokenize_split(corpus, validation_split, tokenizer))
    elif fraction > 0:
        cut = int(len(train) * (1.0 - fraction))
        train, validation = train[:cut], train[cut:]
        logger.info("no %r split: holding out the last %d of %d tokens", validation_split, len(validation), cut)
    else:
        validation = None
    return SplitStreams(train, validation)


def eval_stream(corpus: Corpus, tokenizer, split: str, train_split: str, fraction: float) -> Tokens:
    """The tokens to evaluate on: ``split``, or (when it is the validation split the dataset lacks) the training
    split's held-out tail, exactly as training made it."""
    if split in corpus.splits:
        stream = Tokens.of(tokenize_split(corpus, split, tokenizer))
    else:
        if train_split not in corpus.splits or fraction <= 0:
            corpus.split(split)  # raises: no such split
        streams = split_streams(corpus, tokenizer, train_split, split, fraction)
        stream = streams.train if split == train_split else streams.validation
    if len(stream) < 2:
        raise DatasetError(f"{corpus.source.dataset}: the {split!r} split holds no text to evaluate")
    return stream


class BlockBatches:
    """Batches of packed blocks for one process, in a seeded order per epoch; the position is resumable.

    Epoch e visits the blocks in ``permutation(seed, e)``; process r of w takes every w-th block from r, cut to the
    same count on every process so that all take the same number of steps.
    """

    def __init__(self, blocks: np.ndarray, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if len(blocks) < world:
            raise DatasetError(f"{len(blocks)} training blocks cannot be shared by {world} processes; add text")
        self.blocks, self.batch_size, self.seed, self.rank, self.world = blocks, batch_size, seed, rank, world
        self.per_rank = len(blocks) // world
        self.batches_per_epoch = -(-self.per_rank // batch_size)
        self.epoch, self.index = 0, 0  # the next batch to yield

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        return order[self.rank :: self.world][: self.per_rank]

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order(self.epoch)
        while True:
            if self.index >= self.batches_per_epoch:
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order(self.epoch)
            chosen = order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
            self.index += 1
            yield self.blocks[chosen]


class StreamingBlocks:
    """Batches of blocks packed on the fly from a streamed split (one shard per process); resumable through the
    ``datasets`` iterator's own state plus the tokens left over from the last document."""

    def __init__(
        self,
        split,
        field: str,
        separator: list[int],
        tokenizer,
        ctx_len: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
    ):
        from datasets.distributed import split_dataset_by_node

        self.dataset = split_dataset_by_node(split, rank=rank, world_size=world) if world > 1 else split
        self.field, self.separator, self.tokenizer = field, separator, tokenizer
        self.ctx_len, self.batch_size = ctx_len, batch_size
        self._resume: dict[str, Any] | None = None
        self._state: dict[str, Any] = {"epoch": 0, "dataset": None, "buffer": []}

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state

    def __iter__(self) -> Iterator[np.ndarray]:
        epoch, buffer, resumed = 0, [], self._resume is not None
        if self._resume is not None:
            epoch, buffer = int(self._resume["epoch"]), list(self._resume["buffer"])
            if self._resume["dataset"] is not None:
                self.dataset.load_state_dict(self._resume["dataset"])
            self._resume = None
        batch: list[list[int]] = []
        while True:
            self.dataset.set_epoch(epoch)
            seen = False
            for row in self.dataset:
                seen = True
                buffer.extend(self.tokenizer(row[self.field] or "", add_special_tokens=False)["input_ids"])
                buffer.extend(self.separator)
                while len(buffer) > self.ctx_len:
                    batch.append(buffer[: self.ctx_len + 1])
                    buffer = buffer[self.ctx_len :]
                    if len(batch) == self.batch_size:
                        self._state = {"epoch": epoch, "dataset": self.dataset.state_dict(), "buffer": buffer}
                        yield np.asarray(batch, dtype=np.int32)
                        batch = []
            if not seen and not resumed:
                raise DatasetError("the training stream of this process is empty; add data or use fewer processes")
            resumed = False
            epoch += 1


def _streamed_tokens(split, field: str, separator: list[int], tokenizer) -> Tokens:
    ids: list[int] = []
    unknown: list[int] | None = [] if may_lose_characters(tokenizer) else None
    for row in split:
        encoded = _encode(tokenizer, [row[field] or ""], separator)
        ids.extend(encoded["input_ids"][0])
        if unknown is not None:
            unknown.extend(encoded[UNKNOWN_BYTES][0])
    return Tokens(np.asarray(ids, dtype=np.int32), None if unknown is None else np.asarray(unknown, dtype=np.int32))


@dataclass
class TrainingData:
    batches: BlockBatches | StreamingBlocks
    validation: np.ndarray | None  # packed validation blocks
    validation_unknown: np.ndarray | None = None  # their unknown bytes, packed alike (character vocabularies)


def training_data(corpus: Corpus, tokenizer, options, ctx_len: int, rank: int = 0, world: int = 1) -> TrainingData:
    """Training batches for process ``rank`` of ``world`` and the validation blocks, from a ``TrainConfig``'s data
    options (train_split, validation_split, validation_fraction, validation_documents, batch_size, seed)."""
    if not corpus.source.streaming:
        streams = split_streams(
            corpus, tokenizer, options.train_split, options.validation_split, options.validation_fraction
        )
        if rank == 0:
            warn_unknown_characters(streams.train, "training text")
        blocks = pack(streams.train.ids, ctx_len)
        full = blocks[(blocks != PAD).all(axis=1)]  # the padded tail is left out of training
        batches = BlockBatches(full, options.batch_size, options.seed, rank, world)
        if streams.validation is None:
            return TrainingData(batches, None)
        validation, validation_unknown = streams.validation.packed(ctx_len)
        return TrainingData(batches, validation, validation_unknown) if len(validation) else TrainingData(batches, None)
    train = corpus.split(options.train_split)
    _check_text_field(corpus, train)
    field, separator = corpus.source.text_field, _separator(corpus, tokenizer)
    if options.validation_split in corpus.splits:
        held_out = corpus.split(options.validation_split)
    else:
        held_out = train.take(options.validation_documents)
        train = train.skip(options.validation_documents)
    held_out_tokens = _streamed_tokens(held_out, field, separator, tokenizer)
    if rank == 0:
        warn_unknown_characters(held_out_tokens, "held-out text (a sample of the stream)")
    validation, validation_unknown = held_out_tokens.packed(ctx_len)
    batches = StreamingBlocks(train, field, separator, tokenizer, ctx_len, options.batch_size, rank, world)
    return TrainingData(batches, validation, validation_unknown) if len(validation) else TrainingData(batches, None)
