"""The data pipeline on small corpora the tests write: text, jsonl and parquet files through datasets.load_dataset,
tokenization, packing exactness, held-out validation, data order, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ALPHABET
from train_helpers import offline  # noqa: F401 (offline is an autouse fixture)

from spikegpt.errors import DatasetError
from spikegpt.hub.tokenizer import char_tokenizer
from spikegpt.train.data import (
    PAD,
    BlockBatches,
    DataSource,
    StreamingBlocks,
    eval_stream,
    iter_texts,
    load_corpus,
    pack,
    split_streams,
    token_stream,
    tokenize_split,
)

DOCS = ["First doc: to be, or not to be.\n", "Second, shorter.\n", "Third one; the last!\n"]


@pytest.fixture
def tokenizer():
    return char_tokenizer(ALPHABET)


def source(path, **kwargs) -> DataSource:
    return DataSource(str(path), cache_dir=str(path.parent / "cache"), **kwargs)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_text_file_keeps_the_text_exactly(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(DOCS) + "no final newline")
    corpus = load_corpus(source(path))
    assert corpus.plain_text
    stream = token_stream(tokenize_split(corpus, "train", tokenizer))
    assert tokenizer.decode(stream.tolist()) == path.read_text()  # lines joined as they were, no separators


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_documents_are_separated_by_end_of_text(tmp_path, tokenizer, kind):
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d, "id": i} for i, d in enumerate(DOCS)])
    else:
        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": DOCS, "id": list(range(len(DOCS)))}), path)
    corpus = load_corpus(source(path))
    stream = token_stream(tokenize_split(corpus, "train", tokenizer)).tolist()
    expected = []
    for doc in DOCS:
        expected += [*tokenizer.encode(doc), tokenizer.eos_token_id]
    assert stream == expected


def test_a_directory_and_a_glob_load_all_their_files(tmp_path, tokenizer):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        write_jsonl(folder / f"part-{i}.jsonl", [{"text": doc}])
    for spec in (folder, folder / "part-*.jsonl"):
        assert sorted(iter_texts(load_corpus(source(spec)), "train")) == sorted(DOCS)


def test_a_directorys_file_names_give_its_splits(tmp_path, tokenizer):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": d} for d in DOCS[:2]])
    write_jsonl(folder / "validation.jsonl", [{"text": DOCS[2]}])
    corpus = load_corpus(source(folder))
    assert list(iter_texts(corpus, "train")) == DOCS[:2] and list(iter_texts(corpus, "validation")) == DOCS[2:]
    streams = split_streams(corpus, tokenizer, "train", "validation", 0.1)
    assert tokenizer.decode(streams.validation.ids.tolist(), skip_special_tokens=True) == DOCS[2]


@pytest.mark.parametrize("ctx_len", [1, 3, 7, 16, 100])
def test_packing_predicts_every_token_once(ctx_len):
    rng = np.random.default_rng(ctx_len)
    stream = rng.integers(0, 50, size=int(rng.integers(20, 60)), dtype=np.int32)
    blocks = pack(stream, ctx_len)
    assert blocks.shape[1] == ctx_len + 1
    # inputs are the stream in order; the last block alone may be padded
    inputs, targets = blocks[:, :-1].reshape(-1), blocks[:, 1:].reshape(-1)
    assert np.array_equal(targets[targets != PAD], stream[1:])
    assert np.array_equal(inputs[inputs != PAD][: len(stream) - 1], stream[:-1])
    assert (blocks[:-1] != PAD).all()
    # consecutive blocks overlap by one token: a block's last target is the next block's first input
    assert np.array_equal(blocks[:-1, -1], blocks[1:, 0])


def test_missing_validation_split_is_the_tail_of_the_training_tokens(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    text = "".join(ALPHABET[i % 60] for i in range(1000))
    path.write_text(text)
    corpus = load_corpus(source(path))
    streams = split_streams(corpus, tokenizer, "train", "validation", 0.1)
    full = tokenizer.encode(text)
    assert streams.train.ids.tolist() == full[:900] and streams.validation.ids.tolist() == full[900:]
    assert eval_stream(corpus, tokenizer, "validation", "train", 0.1).ids.tolist() == full[900:]


def test_block_batches_cover_each_epoch_once_and_resume(tmp_path):
    blocks = np.arange(23 * 5, dtype=np.int32).reshape(23, 5)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            batches = BlockBatches(blocks, batch_size=4, seed=7, rank=rank, world=world)
            it = iter(batches)
            seen += [row[0] for _ in range(batches.batches_per_epoch) for row in next(it)]
        assert len(seen) == len(set(seen)) == (23 // world) * world  # no block twice, at most world-1 left out
    batches = BlockBatches(blocks, batch_size=4, seed=7)
    it = iter(batches)
    for _ in range(9):  # into the second epoch
        next(it)
    state = batches.state_dict()
    expected = [next(it) for _ in range(5)]
    resumed = BlockBatches(blocks, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all(np.array_equal(next(it), e) for e in expected)


def test_streaming_packs_blocks_and_resumes(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d * (i + 1)} for i, d in enumerate(DOCS * 3)])
    corpus = load_corpus(source(path, streaming=True))
    map_style = load_corpus(source(path))
    stream = token_stream(tokenize_split(map_style, "train", tokenizer))
    separator = [tokenizer.eos_token_id]
    batches = StreamingBlocks(corpus.split("train"), "text", separator, tokenizer, ctx_len=8, batch_size=3)
    it = iter(batches)
    first = [next(it) for _ in range(4)]
    assert np.array_equal(np.concatenate(first)[:, 1:].reshape(-1), stream[1 : 1 + 4 * 3 * 8])
    state = batches.state_dict()
    expected = [next(it) for _ in range(3)]
    resumed = StreamingBlocks(corpus.split("train"), "text", separator, tokenizer, ctx_len=8, batch_size=3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all(np.array_equal(next(it), e) for e in expected)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_corpus(source(tmp_path / "nothing.txt"))


def test_unknown_hub_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot load dataset 'no-such-user/no-such-data'"):
        load_corpus(DataSource("no-such-user/no-such-data", cache_dir=str(tmp_path)))


def test_empty_dataset_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DatasetError, match="empty; it holds no text to train on"):
        load_corpus(source(path))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": None}])
    with pytest.raises(DatasetError, match="the 'train' split holds no text to train on"):
        split_streams(load_corpus(source(blank)), char_tokenizer(ALPHABET, end_of_text=False), "train", "v", 0.1)


def test_missing_text_field_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": d} for d in DOCS])
    corpus = load_corpus(source(path))
    with pytest.raises(DatasetError, match="no 'text' field \\(fields: body\\); name the text field with --text-field"):
        tokenize_split(corpus, "train", tokenizer)


UNKNOWN_DOCS = ["In 1990 the café — 東京\n", "plain text\n", "naïve ☃ snow\n"]  # —, 東, 京, ï, ☃ are unknown


def test_eval_counts_every_byte_and_reports_the_unknown_ones(tmp_path, tokenizer, capsys):
    """``spikegpt eval`` on text with characters outside the model's vocabulary: bits per byte are over every byte
    of the text the targets spell (the unknown characters' too), and how many were unknown is reported."""
    from conftest import lively_weights_, tiny_config

    from spikegpt import SpikeGPTForCausalLM
    from spikegpt.cli import main

    model_dir = tmp_path / "model"
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(eos_token_id=tokenizer.eos_token_id)), seed=3)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in UNKNOWN_DOCS])
    args = ["eval", "--model", str(model_dir), "--dataset", str(path), "--split", "train", "--json"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--ctx-len", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    text = "".join(UNKNOWN_DOCS)[1:]  # every character after the first is a target (separators spell nothing)
    assert result["bytes"] == len(text.encode())
    lost = [ch for ch in text if ch not in ALPHABET]
    assert result["unknown_characters"] == len(lost) == 5
    assert result["unknown_bytes"] == len("".join(lost).encode())
    assert result["tokens"] == len(text) + len(UNKNOWN_DOCS)  # characters and the end-of-text separators


def test_training_warns_once_with_the_share_of_unknown_characters(tmp_path, tokenizer, caplog):
    from types import SimpleNamespace

    from spikegpt.train.data import training_data

    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in UNKNOWN_DOCS * 20])
    options = SimpleNamespace(
        train_split="train", validation_split="validation", validation_fraction=0.1, batch_size=2, seed=0
    )
    with caplog.at_level("WARNING", logger="spikegpt.train.data"):
        data = training_data(load_corpus(source(path)), tokenizer, options, ctx_len=8)
    warnings = [r.getMessage() for r in caplog.records if "outside the vocabulary" in r.getMessage()]
    assert len(warnings) == 1, warnings
    # per token of the stream: is it an unknown character (each document's characters, then its separator)
    flags = [flag for doc in UNKNOWN_DOCS * 20 for flag in [ch not in ALPHABET for ch in doc] + [False]]
    cut = int(len(flags) * 0.9)  # the training part; the rest is held out
    unknown = sum(flags[:cut])
    assert f"{unknown} characters ({100 * unknown / cut:.2f}% of {cut} tokens)" in warnings[0]
    assert data.validation_unknown is not None and data.validation_unknown.shape == data.validation.shape
