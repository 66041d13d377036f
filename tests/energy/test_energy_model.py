"""Reports of real forward passes: a model wired to fire known amounts, spikes counted independently by hooks,
chunked reading, and the server's field made with a single host transfer."""

from __future__ import annotations

import pytest
import torch
from conftest import lively_weights_, tiny_config
from torch.overrides import TorchFunctionMode

from spikegpt import SpikeGPTForCausalLM
from spikegpt.energy import energy_field, energy_report, read_spike_stats
from spikegpt.modeling.stats import SpikeStats

D, HIDDEN, VOCAB = 8, 16, 6
ATT_FIRING = {0: [0, 1], 1: [5]}  # channels of each block's time-mix LIF wired to fire at every token
FFN_FIRING = {0: [2, 3, 4], 1: []}


def forced_model() -> SpikeGPTForCausalLM:
    """A model whose spikes are known in advance.

    Token t's embedding row is +1 on its first t + 1 channels and -1 elsewhere, so it emits t + 1 spikes. In each
    block, ln1 and ln2 have zero weight and bias e_0, so every mix sees the same constant vector; with zero key and
    receptance weights the time mix outputs 0.5 · V e_0 and the channel mix 0.5 · V relu(K e_0)². Those values
    are 4 on the wired channels (an LIF with tau 2 and threshold 1 then fires at every token) and 0 elsewhere.
    """
    config = tiny_config(n_embd=D, ffn_hidden=HIDDEN, vocab_size=VOCAB, n_layer=2)
    model = SpikeGPTForCausalLM(config).eval()
    e0 = torch.zeros(D)
    e0[0] = 1.0
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        emb = -torch.ones(VOCAB, D)
        for t in range(VOCAB):
            emb[t, : t + 1] = 1.0
        model.model.emb.weight.copy_(emb)
        model.model.blocks[0].ln0.weight.fill_(1.0)
        for i, block in enumerate(model.model.blocks):
            for ln in (block.ln1, block.ln2):
                ln.bias.copy_(e0)
            for mix in (block.att.time_mix_k, block.att.time_mix_v, block.att.time_mix_r):
                mix.fill_(1.0)
            block.ffn.time_mix_k.fill_(1.0)
            block.ffn.time_mix_r.fill_(1.0)
            block.att.value.weight[ATT_FIRING[i], 0] = 8.0
            block.att.output.weight.copy_(torch.eye(D))
            block.ffn.key.weight[0, 0] = 1.0
            block.ffn.value.weight[FFN_FIRING[i], 0] = 8.0
    return model


def test_forced_model_fires_as_wired_and_the_report_counts_follow():
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1]])
    tokens = ids.shape[1]
    model = forced_model()
    stats = model(ids, output_spike_stats=True).spike_stats
    embedding_spikes = int((ids + 1).sum())  # token t fires t + 1 channels
    expected = [embedding_spikes]
    for i in range(2):
        expected += [len(ATT_FIRING[i]) * tokens, len(FFN_FIRING[i]) * tokens]
    assert stats.counts[0].tolist() == expected

    elements = tokens * D
    strict = energy_report(stats, model.config, "strict")
    paper = energy_report(stats, model.config, "paper")
    assert [layer.ops.count("ac") for layer in strict.layers] == [2 * embedding_spikes, *expected[1:], 0]
    assert [layer.ops.firing_rate for layer in strict.layers[:-1]] == [s / elements for s in expected]
    projections = {"att": 3 * D, "ffn": 2 * HIDDEN + D}  # ACs per input spike under the paper rule
    for layer, previous, own in zip(paper.layers[1:-1], expected[:-1], expected[1:], strict=True):
        assert layer.ops.count("ac") == projections[layer.ops.name.split(".")[-1]] * previous + own
    assert strict.layers[4].ops.count("ac") == 0 and strict.layers[4].ops.firing_rate == 0.0


def spikes_seen_by_hooks(model: SpikeGPTForCausalLM, ids: torch.Tensor) -> SpikeStats:
    """Spike statistics counted from the spiking modules' outputs, independently of the model's own counting."""
    counts = []

    def hook(module, inputs, output):
        counts.append(float((output[0] != 0).sum()))

    modules = [model.model.emb_spikes]
    for block in model.model.blocks:
        modules += [block.att_lif, block.ffn_lif]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return SpikeStats(torch.tensor([counts]), torch.tensor([ids.shape[1]]), model.model.sites, model.config.n_embd)


@pytest.mark.parametrize("rule", ["strict", "paper"])
def test_report_of_a_forward_pass_equals_the_report_of_its_spikes(rule):
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed=7).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 37), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        measured = model(ids, output_spike_stats=True).spike_stats
    from_model = energy_report(measured, model.config, rule).to_dict(terms=True)
    from_hooks = energy_report(spikes_seen_by_hooks(model, ids), model.config, rule).to_dict(terms=True)
    assert from_model == from_hooks
    assert 0 < from_model["firing_rate"] < 1
    chunked = read_spike_stats(model, ids[0].tolist(), chunk_tokens=5, progress=False)
    assert energy_report(chunked, model.config, rule).to_dict(terms=True) == from_model


class HostTransfers(TorchFunctionMode):
    """Counts tensor operations that copy values to the host."""

    TRANSFERS = frozenset({"tolist", "item", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"})

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.TRANSFERS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_energy_field_reads_the_statistics_once_and_carries_both_rules():
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        stats = model(ids, output_spike_stats=True).spike_stats
    with HostTransfers() as transfers:
        field = energy_field(stats, model.config, generated_tokens=4, profile="45nm-int8")
    assert transfers.count == 1
    assert field["firing_rate"] == pytest.approx(float(stats.firing_rate()))
    assert field["profile"] == "45nm-int8" and field["generated_tokens"] == 4 and field["tokens"] == 12
    assert set(field["rules"]) == {"strict", "paper", "event"}
    for rule, report in field["rules"].items():
        assert report["rule"] == rule and report["profile"] == "45nm-int8"
        assert report["head_tokens"] == 12  # the forward computed the logits of all 12 positions
        assert report["energy_j_per_generated_token"] == pytest.approx(report["energy_j"] / 4)
        assert report["energy_j_per_token"] == pytest.approx(report["energy_j"] / 12)
    stats.head_tokens = None  # statistics that do not say: the head counts once per generated token
    field = energy_field(stats, model.config, generated_tokens=4, profile="45nm-int8")
    assert all(report["head_tokens"] == 4 for report in field["rules"].values())
    assert field["rules"]["paper"]["energy_j"] < field["rules"]["strict"]["energy_j"]
