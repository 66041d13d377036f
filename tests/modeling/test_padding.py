"""Padding: a padded batch computes, row by row, what each row's real tokens compute alone.

For both placements (and the encoders' two kinds of spikes), both forms (the parallel one of prompts and training,
the recurrent one-token one of decoding), left and right padding, from a fresh or a carried state: the logits at
the real positions, the final recurrent state, every spike train at the real positions and the statistics (spikes
per site, reads per product, tokens) equal those of the row run alone. The padded positions' ids are random, so
nothing may depend on them. Float64 models: what a batch and a single row may differ by is the rounding of their
matrix products (1e-12); spikes and statistics are compared exactly.
"""

from __future__ import annotations

import pytest
import torch
from test_model_forms import make_model

from spikegpt import RecurrentState

MODELS = {
    "residual": {},
    "residual-ffn_pre": dict(ffn_pre=True),
    "inputs-counts": dict(spike_placement="inputs"),
    "inputs-binary": dict(spike_placement="inputs", input_spikes="binary"),
}
LENGTHS = [7, 3, 1, 5]  # rows of a padded batch; the longest has no padding


def padded_batch(lengths, side, vocab_size):
    """Random ids ``[B, max(lengths)]`` (the padded positions too) and the 0/1 attention mask of ``side``
    padding."""
    width = max(lengths)
    ids = torch.randint(0, vocab_size, (len(lengths), width))
    positions = torch.arange(width)
    mask = torch.stack([positions >= width - n if side == "left" else positions < n for n in lengths])
    return ids, mask.long()


def spike_recorder(model):
    """Forward hooks recording the spikes of every spiking module (embedding, LIF layers, input encoders), call by
    call; returns (records, remove)."""
    records = []

    def record(module, args, out):
        spikes = out[0]
        records.append([s.detach().clone() for s in (spikes if isinstance(spikes, list) else [spikes])])

    kinds = ("EmbeddingSpikes", "LIFLayer", "InputSpikes")
    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__ in kinds]
    return records, lambda: [hook.remove() for hook in hooks]


def run_recording(model, *args, **kwargs):
    records, remove = spike_recorder(model)
    try:
        out = model(*args, output_spike_stats=True, **kwargs)
    finally:
        remove()
    return out, records


def carried_state(model, batch, with_state):
    if not with_state:
        return None
    prefix = torch.randint(0, model.config.vocab_size, (batch, 4))
    return model(prefix, use_cache=True).state


def assert_row_equals_alone(batch_out, batch_spikes, b, real, alone_out, alone_spikes):
    """Row b of a padded batch's output against the same row run alone (its real positions only)."""
    torch.testing.assert_close(batch_out.logits[b, real], alone_out.logits[0], rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(batch_out.state.select([b]).tensors(), alone_out.state.tensors(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(batch_spikes, alone_spikes, strict=True):  # module by module
        for part, alone_part in zip(ours, theirs, strict=True):
            assert torch.equal(part[b, real], alone_part[0])
    stats, alone = batch_out.spike_stats, alone_out.spike_stats
    assert torch.equal(stats.counts[b], alone.counts[0])
    assert torch.equal(stats.reads[b], alone.reads[0])
    assert stats.tokens[b] == alone.tokens[0] == stats.head_tokens[b] == int(real.sum())


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "carried-state"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("placement", MODELS)
def test_parallel_form_padded_rows_equal_rows_alone(placement, side, with_state, seed):
    model = make_model(seed, torch.float64, **MODELS[placement])
    ids, mask = padded_batch(LENGTHS, side, model.config.vocab_size)
    state = carried_state(model, len(LENGTHS), with_state)
    with torch.no_grad():
        out, spikes = run_recording(model, ids, state=state, use_cache=True, attention_mask=mask)
        assert torch.isfinite(out.logits).all()
        for b in range(len(LENGTHS)):
            real = mask[b].bool()
            row_state = state.select([b]) if state is not None else None
            alone, alone_spikes = run_recording(model, ids[b : b + 1, real], state=row_state, use_cache=True)
            assert_row_equals_alone(out, spikes, b, real, alone, alone_spikes)


# (right padding from a fresh state differs from the carried case only in the state it starts from)
@pytest.mark.parametrize(
    "side, with_state",
    [("left", False), ("left", True), ("right", True)],
    ids=["left", "left-carried-state", "right-carried-state"],
)
@pytest.mark.parametrize("placement", MODELS)
def test_recurrent_form_padded_rows_equal_rows_alone(placement, side, with_state, seed):
    """One token per call, as ``generate()`` decodes: ``attention_mask`` covers the tokens so far (transformers'
    convention), ``decoding`` on (the traced step serves the calls without padding). A padded token leaves its
    row's state exactly as it was and counts nothing."""
    model = make_model(seed, torch.float64, **MODELS[placement])
    ids, mask = padded_batch(LENGTHS, side, model.config.vocab_size)
    state = carried_state(model, len(LENGTHS), with_state) or model.fresh_state(len(LENGTHS))
    start = state.clone()
    logits, stats = [], None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            before = state
            out = model(ids[:, t : t + 1], state=state, attention_mask=mask[:, : t + 1], decoding=True)
            counted = model(ids[:, t : t + 1], state=before, attention_mask=mask[:, : t + 1], output_spike_stats=True)
            padded = ~mask[:, t].bool()
            for new, old in zip(out.state.select(padded).tensors(), before.select(padded).tensors(), strict=True):
                assert torch.equal(new, old)
            assert not counted.spike_stats.counts[padded].any() and not counted.spike_stats.reads[padded].any()
            stats = counted.spike_stats if stats is None else stats + counted.spike_stats
            logits.append(out.logits)
            state = out.state
        logits = torch.cat(logits, dim=1)
        assert torch.isfinite(logits).all()
        for b in range(len(LENGTHS)):
            real = mask[b].bool()
            alone = model(ids[b : b + 1, real], state=start.select([b]), output_spike_stats=True)
            torch.testing.assert_close(logits[b, real], alone.logits[0], rtol=1e-12, atol=1e-12)
            for ours, theirs in zip(state.select([b]).tensors(), alone.state.tensors(), strict=True):
                torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
            assert torch.equal(stats.counts[b], alone.spike_stats.counts[0])
            assert torch.equal(stats.reads[b], alone.spike_stats.reads[0])
            assert stats.tokens[b] == stats.head_tokens[b] == len(ids[b, real])


@pytest.mark.parametrize("placement", ["residual", "inputs-binary"])
def test_padded_training_batch_has_the_gradients_of_its_rows(placement, seed):
    """Right-padded rows with their padded targets ignored: the loss's gradients are those of the rows alone
    (the kernels' backwards pass nothing through a padded position), to rounding."""
    model = make_model(seed, torch.float64, **MODELS[placement]).train()
    ids, mask = padded_batch(LENGTHS, "right", model.config.vocab_size)
    targets = torch.where(mask.bool(), torch.randint(0, model.config.vocab_size, ids.shape), -100)
    n_targets = int(mask.sum())
    model.zero_grad()
    model(ids, attention_mask=mask, shift_labels=targets, num_items_in_batch=n_targets).loss.backward()
    padded_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    for b, n in enumerate(LENGTHS):
        model(ids[b : b + 1, :n], shift_labels=targets[b : b + 1, :n], num_items_in_batch=n_targets).loss.backward()
    for name, p in model.named_parameters():
        # normwise; the decay and bonus enter the WKV in fp32 whatever the model's dtype (TimeMix casts them)
        tolerance = 1e-6 if name.endswith(("time_decay", "time_first")) else 1e-12
        error = (padded_grads[name] - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-300)
        assert error <= tolerance, f"{name}: {error:.2e}"


def test_an_all_ones_mask_is_no_mask(seed):
    model = make_model(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    plain = model(ids, use_cache=True, output_spike_stats=True)
    masked = model(ids, use_cache=True, output_spike_stats=True, attention_mask=torch.ones_like(ids))
    assert torch.equal(plain.logits, masked.logits)
    assert all(torch.equal(a, b) for a, b in zip(plain.state.tensors(), masked.state.tensors(), strict=True))


def test_a_state_of_only_padding_is_the_state_given(seed):
    """A call whose every position is padding (a row that has not started yet) returns its state unchanged."""
    model = make_model(seed)
    state = model(torch.randint(0, model.config.vocab_size, (2, 5)), use_cache=True).state
    out = model(torch.randint(0, model.config.vocab_size, (2, 3)), state=state, attention_mask=torch.zeros(2, 3))
    assert all(torch.equal(a, b) for a, b in zip(out.state.tensors(), state.tensors(), strict=True))
    fresh = model(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.zeros(1, 2), use_cache=True).state
    empty = RecurrentState.fresh(1, model.config.n_layer, model.config.n_embd)
    assert all(torch.equal(a, b) for a, b in zip(fresh.tensors(), empty.tensors(), strict=True))
