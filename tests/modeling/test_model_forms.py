"""The parallel form, any chunking of it, and the token-by-token recurrent form compute the same function."""

from __future__ import annotations

import pytest
import torch
from conftest import lively_weights_, tiny_config

from spikegpt import RecurrentState, SpikeGPTForCausalLM
from spikegpt.modeling.model import IGNORE_INDEX

SPLITS = [
    [1] * 23,  # token by token
    [5, 5, 5, 8],
    [1, 13, 2, 7],
    [22, 1],
]


def make_model(seed: int, dtype=torch.float32, **overrides) -> SpikeGPTForCausalLM:
    torch.manual_seed(seed)
    model = SpikeGPTForCausalLM(tiny_config(**overrides))
    return lively_weights_(model, seed).to(dtype).eval()


def run_in_pieces(model, ids, sizes):
    state = model.fresh_state(ids.shape[0])
    logits, counts, start = [], 0, 0
    for size in sizes:
        out = model(ids[:, start : start + size], state=state, output_spike_stats=True)
        state, start = out.state, start + size
        logits.append(out.logits)
        counts = counts + out.spike_stats.counts
    return torch.cat(logits, dim=1), counts, state


def spike_trains(model, ids, sizes):
    """Every LIF layer's output spikes, position by position, when the sequence is fed in pieces."""
    trains = []
    hooks = [
        layer.register_forward_hook(lambda mod, args, out: trains.append(out[0].detach().clone()))
        for layer in model.modules()
        if type(layer).__name__ == "LIFLayer"
    ]
    try:
        run_in_pieces(model, ids, sizes)
    finally:
        for hook in hooks:
            hook.remove()
    n_lif = sum(1 for m in model.modules() if type(m).__name__ == "LIFLayer")
    per_piece = [trains[i : i + n_lif] for i in range(0, len(trains), n_lif)]
    return [torch.cat([piece[j] for piece in per_piece], dim=1) for j in range(n_lif)]


@pytest.mark.parametrize("sizes", SPLITS, ids=["tokens", "fives", "mixed", "long-then-one"])
@pytest.mark.parametrize("ffn_pre", [False, True], ids=["att", "ffn_pre"])
def test_pieces_equal_one_pass_fp32(seed, sizes, ffn_pre):
    model = make_model(seed, ffn_pre=ffn_pre)
    ids = torch.randint(0, model.config.vocab_size, (3, sum(sizes)))
    one_pass = model(ids, use_cache=True, output_spike_stats=True)
    logits, counts, state = run_in_pieces(model, ids, sizes)
    pieces, whole = spike_trains(model, ids, sizes), spike_trains(model, ids, [sum(sizes)])
    assert all(torch.equal(a, b) for a, b in zip(pieces, whole, strict=True))
    assert torch.equal(counts, one_pass.spike_stats.counts)
    assert (logits - one_pass.logits).abs().max() <= 1e-5 * one_pass.logits.abs().max()
    for ours, theirs in zip(state.tensors(), one_pass.state.tensors(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_pieces_equal_one_pass_fp64(seed):
    """In float64 the forms agree to rounding: 1e-12 relative."""
    model = make_model(seed, dtype=torch.float64)
    ids = torch.randint(0, model.config.vocab_size, (2, 19))
    one_pass = model(ids, use_cache=True, output_spike_stats=True)
    logits, counts, _ = run_in_pieces(model, ids, [1, 4, 1, 9, 4])
    assert torch.equal(counts, one_pass.spike_stats.counts)
    torch.testing.assert_close(logits, one_pass.logits, rtol=1e-12, atol=1e-12)


def test_every_layer_spikes_and_rates_are_fractions(seed):
    model = make_model(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    stats = model(ids, output_spike_stats=True).spike_stats
    rates = stats.site_rates()
    assert stats.sites == ("embedding", "blocks.0.att.lif", "blocks.0.ffn.lif", "blocks.1.att.lif", "blocks.1.ffn.lif")
    assert torch.all(rates > 0) and torch.all(rates < 1)
    assert stats.counts.shape == (2, 5) and torch.equal(stats.tokens, torch.tensor([16, 16]))
    expected_mean = stats.counts.sum() / (2 * 16 * model.config.n_embd * 5)
    torch.testing.assert_close(stats.firing_rate(), expected_mean)


def test_stacked_states_continue_like_separate_sequences(seed):
    """A batch is just a stack of states: select/stack/clone keep each row's own future."""
    model = make_model(seed)
    a, b = (torch.randint(0, model.config.vocab_size, (1, 9)) for _ in range(2))
    next_a, next_b = (torch.randint(0, model.config.vocab_size, (1, 3)) for _ in range(2))
    state_a = model(a, use_cache=True).state
    state_b = model(b, use_cache=True).state
    # run each alone twice, as a 2-row batch would be, to compare at equal matmul shapes
    alone_a = model(torch.cat([next_a, next_a]), state=RecurrentState.stack([state_a, state_a])).logits[:1]
    both = RecurrentState.stack([state_a, state_b])
    kept = both.clone()
    together = model(torch.cat([next_a, next_b]), state=both)
    assert torch.equal(together.logits[:1], alone_a)
    for before, after in zip(kept.tensors(), both.tensors(), strict=True):
        assert torch.equal(before, after), "a forward pass must not modify the state it was given"
    assert torch.equal(together.state.select([1]).att_v, together.state.att_v[1:2])


def test_fresh_state_equals_no_state(seed):
    model = make_model(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    assert torch.equal(model(ids).logits, model(ids, state=model.fresh_state(2)).logits)


def test_modules_keep_no_state_between_calls(seed):
    model = make_model(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    first = model(ids).logits
    model(torch.randint(0, model.config.vocab_size, (2, 5)))
    assert torch.equal(model(ids).logits, first)


def test_labels_give_shifted_cross_entropy(seed):
    model = make_model(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(out.loss, expected)


def test_shift_labels_ignore_padding_and_sum_over_num_items(seed):
    """The one loss training and evaluation use: targets already aligned with the positions, -100 skipped, and
    ``num_items_in_batch`` turning the mean into sum / count (a whole accumulated batch's count)."""
    model = make_model(seed)
    block = torch.randint(0, model.config.vocab_size, (2, 13))
    targets = block[:, 1:].clone()
    targets[1, 8:] = IGNORE_INDEX
    out = model(block[:, :-1], shift_labels=targets)
    kept = targets.reshape(-1) != IGNORE_INDEX
    per_position = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1).clamp(min=0), reduction="none"
    )
    torch.testing.assert_close(out.loss, per_position[kept].mean())
    summed = model(block[:, :-1], shift_labels=targets, num_items_in_batch=100).loss
    torch.testing.assert_close(summed, per_position[kept].sum() / 100)
    # the same loss as `labels` shifted inside, on the block itself
    torch.testing.assert_close(model(block, labels=block).loss, model(block[:, :-1], shift_labels=block[:, 1:]).loss)


def test_gradients_reach_every_parameter(seed):
    model = make_model(seed).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    model(ids, labels=ids).loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not silent
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "ln0" not in n)


def test_non_spiking_switch_is_identity_neurons(seed):
    model = make_model(seed, spiking=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    out = model(ids, output_spike_stats=True)
    assert out.spike_stats.site_rates()[0] > 0.99  # float embedding: (almost) every value nonzero
    pieces, _, _ = run_in_pieces(model, ids, [2, 4])
    torch.testing.assert_close(pieces, out.logits, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors(seed):
    model = make_model(seed)
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="state holds 2 sequences"):
        model(torch.zeros(1, 3, dtype=torch.long), state=model.fresh_state(2))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least the input's 3 columns"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1]]))
