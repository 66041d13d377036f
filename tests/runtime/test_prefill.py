"""Chunked batched prefill: a prefix's state and logits are the same bits whoever it shares the call with, and
whether its first chunks were computed in this call sequence or restored from a stored state."""

from __future__ import annotations

import pytest
import torch
from conftest import lively_weights_, tiny_config

from spikegpt import SpikeGPTForCausalLM
from spikegpt.modeling.state import RecurrentState
from spikegpt.runtime.prefill import ChunkRunner, Prefiller, PrefillTask, aligned
from spikegpt.runtime.state_cache import StateCache

CHUNK, ROWS = 8, 3


@pytest.fixture(scope="module")
def model() -> SpikeGPTForCausalLM:
    return lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed=11).eval()


def prompt(generator: torch.Generator, n: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=generator).tolist()


def whole(model, tokens: list[int], **kwargs) -> PrefillTask:
    """A task reading all of ``tokens`` from a fresh state."""
    return PrefillTask(tokens, 0, len(tokens), model.fresh_state(1), **kwargs)


def read(model, tasks: list[PrefillTask], rows: int = ROWS) -> None:
    """Run the tasks to their ends, ``rows`` at a time, in any grouping the arrival order gives."""
    runner = ChunkRunner(model, rows, CHUNK)
    with torch.inference_mode():
        while not all(t.done for t in tasks):
            runner([t for t in tasks if not t.done][:rows])


def same_state(a: RecurrentState, b: RecurrentState) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors(), strict=True))


def test_a_row_is_the_same_bits_alone_or_among_others_and_restored(model, seed):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    mine = prompt(g, 5 * CHUNK, vocab)
    alone = whole(model, mine)
    read(model, [alone])
    # among others of other lengths, in another row and another grouping per call
    others = [whole(model, prompt(g, n * CHUNK, vocab)) for n in (2, 7, 1, 3)]
    crowded = whole(model, mine)
    read(model, [*others[:2], crowded, *others[2:]])
    assert same_state(alone.state, crowded.state) and torch.equal(alone.logits, crowded.logits)
    assert torch.equal(alone.stats.counts, crowded.stats.counts)
    # restored at every boundary: the state there, then the rest read from it
    for split in range(CHUNK, len(mine), CHUNK):
        head = PrefillTask(mine, 0, split, model.fresh_state(1))
        read(model, [head])
        rest = PrefillTask(mine, split, len(mine), head.state.clone())
        read(model, [rest, whole(model, others[0].tokens)])
        assert same_state(alone.state, rest.state) and torch.equal(alone.logits, rest.logits), split


def test_chunks_compute_the_models_function(model, seed):
    """The chunked reading is the model's forward (to float tolerance: only the call shapes differ)."""
    g = torch.Generator().manual_seed(seed)
    tokens = prompt(g, 3 * CHUNK, model.config.vocab_size)
    task = whole(model, tokens)
    read(model, [task])
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), use_cache=True)
    torch.testing.assert_close(task.logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(task.state.wkv_den, out.state.wkv_den, rtol=1e-4, atol=1e-4)


def test_prefiller_stores_states_at_stride_and_end_and_announces_them(model, seed):
    g = torch.Generator().manual_seed(seed)
    cache = StateCache(CHUNK, "test", 1 << 20, template=model.fresh_state(1))
    prefiller = Prefiller(model, ROWS, CHUNK, cache, stride=2 * CHUNK)
    tokens = prompt(g, 5 * CHUNK + 3, model.config.vocab_size)
    end = aligned(len(tokens), CHUNK)
    task = PrefillTask(tokens, 0, end, model.fresh_state(1))
    prefiller.add(task)
    keys = cache.keys(tokens)
    assert prefiller.upcoming(keys, len(tokens)) == end  # the end, then 4 chunks, then 2
    assert prefiller.upcoming(keys, end - 1) == 4 * CHUNK
    with torch.inference_mode():
        finished = []
        while prefiller.busy:
            finished += prefiller.step()
    assert finished == [task] and prefiller.upcoming(keys, len(tokens)) == 0
    assert cache.stats.stored == 3  # 2 and 4 chunks (the stride), 5 (the end)
    n, state = cache.lookup(tokens, len(tokens) - 1)
    assert n == end and same_state(state, task.state)
    n, _ = cache.lookup(tokens, end - 1)
    assert n == 4 * CHUNK


def test_a_failing_task_fails_alone_and_the_others_are_unchanged(model, seed):
    tokens = prompt(torch.Generator().manual_seed(seed), 2 * CHUNK, model.config.vocab_size)
    reference = whole(model, tokens)
    read(model, [reference])
    prefiller = Prefiller(model, ROWS, CHUNK)
    good = whole(model, tokens)
    broken_state = PrefillTask(tokens, 0, len(tokens), RecurrentState.fresh(1, 2, 5))  # another model's shape

    def fail(position, logits):
        raise RuntimeError("scores failed")

    broken_scores = whole(model, tokens, scores=fail)
    for task in (broken_state, good, broken_scores):
        prefiller.add(task)
    finished = []
    with torch.inference_mode():
        while prefiller.busy:
            finished += prefiller.step()
    assert {id(t) for t in finished} == {id(broken_state), id(good), id(broken_scores)}
    assert broken_state.error and "scores failed" in broken_scores.error and good.error is None
    assert same_state(good.state, reference.state) and torch.equal(good.logits, reference.logits)
