"""Products priced from what they read (``SpikeStats.reads``): strict and event by hand on made-up reads, on models
whose spikes are forced, the equal-bit baseline, and counts past 2^24 staying exact."""

from __future__ import annotations

import pytest
import torch
from conftest import lively_weights_, tiny_config

from spikegpt import SpikeGPTForCausalLM
from spikegpt.energy import HardwareProfile, count_operations, energy_report
from spikegpt.energy.accounting import SpikeTotals
from spikegpt.energy.profiles import INT8
from spikegpt.errors import EnergyError
from spikegpt.modeling.layout import spike_layout
from spikegpt.modeling.stats import SpikeStats

ONE_PJ_EACH = HardwareProfile("unit", mac_pj=1.0, ac_pj=1.0, neuron_pj=1.0, elementwise_pj=1.0)
# d = 4, F = 8, V = 5, two blocks; two sequences of 3 and 2 tokens: T = 5
SHAPE = dict(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2)
# per block: att.key, .value, .receptance, .output, ffn.key, .receptance, .value
PROJECTIONS = spike_layout(tiny_config(**SHAPE)).product_names
FAN_OUT = [4, 4, 4, 4, 8, 4, 4] * 2
FAN_IN = [4, 4, 4, 4, 4, 4, 8] * 2
# made-up reads per row and projection: (nonzero elements, summed counts)
ROW_READS = [[(5, 9), (3, 3), (12, 20), (0, 0), (7, 7), (2, 5), (30, 31)] * 2, [(4, 4), (1, 2), (6, 6)] + [(2, 3)] * 11]


def stats_for(config, row_spikes) -> SpikeStats:
    sites = spike_layout(config).sites
    return SpikeStats(
        torch.tensor(row_spikes, dtype=torch.long),
        torch.tensor([3, 2]),
        sites,
        config.n_embd,
        torch.tensor(ROW_READS, dtype=torch.long),
        PROJECTIONS,
    )


def ops_of(layers) -> list[tuple[str, int, int, int, int]]:
    return [(ops.name, *(ops.count(k) for k in ("mac", "ac", "neuron", "elementwise"))) for ops in layers]


def summed_reads() -> list[tuple[int, int]]:
    return [(a[0] + b[0], a[1] + b[1]) for a, b in zip(*ROW_READS, strict=True)]


@pytest.mark.parametrize("encoding", ["counts", "binary"])
def test_inputs_placement_strict_by_hand(encoding):
    config = tiny_config(**SHAPE, spike_placement="inputs", input_spikes=encoding)
    layers = count_operations(SpikeTotals.from_stats(stats_for(config, [[4], [3]])), config, "strict")
    ac = [s * out for (_, s), out in zip(summed_reads(), FAN_OUT, strict=True)]  # one AC per count and output
    if encoding == "counts":
        # time mix: ln 100, shift 120, encode 4·T·4d = 320, threshold scaling T·4d = 80, sigmoid 60, WKV 380,
        # gate 20, residual 20; channel mix: ln 100, shift 80, encode 4·T·(2d + F) = 320, scaling T·(F + 2d) = 80,
        # ReLU² 80, sigmoid 60, gate 20, residual 20
        att, ffn, neurons = 1100, 760, (0, 0)
    else:  # binary: a LIF update per encoded element instead of the counts' encoding and scaling
        att, ffn, neurons = 700, 360, (80, 80)
    assert ops_of(layers) == [
        ("embedding", 0, 2 * 7, 0, 80),
        ("blocks.0.att", 0, sum(ac[0:4]), neurons[0], att),
        ("blocks.0.ffn", 0, sum(ac[4:7]), neurons[1], ffn),
        ("blocks.1.att", 0, sum(ac[7:11]), neurons[0], att),
        ("blocks.1.ffn", 0, sum(ac[11:14]), neurons[1], ffn),
        ("head", 100, 0, 0, 100),
    ]
    spikes = [s for _, s in summed_reads()]
    assert layers[1].firing_rate == pytest.approx(sum(spikes[0:4]) / (5 * 16))  # spikes per element read
    assert layers[2].firing_rate == pytest.approx(sum(spikes[4:7]) / (5 * 16))
    event = count_operations(SpikeTotals.from_stats(stats_for(config, [[4], [3]])), config, "event")
    assert ops_of(event) == ops_of(layers)  # whole-number inputs: zeros were already free under strict
    paper = count_operations(SpikeTotals.from_stats(stats_for(config, [[4], [3]])), config, "paper")
    for strict_ops, paper_ops in zip(layers, paper, strict=True):  # only WKV differs: 6·T·d = 120 MAC
        wkv = 120 if paper_ops.name.endswith(".att") else 0
        assert paper_ops.count("mac") == strict_ops.count("mac") + wkv
        assert paper_ops.count("ac") == strict_ops.count("ac")


def test_event_and_strict_differ_exactly_by_the_zero_inputs():
    """Residual placement: every product reads real values; event skips the zeros, strict does not."""
    config = tiny_config(**SHAPE)
    stats = stats_for(config, [[4, 1, 2, 0, 3], [3, 2, 0, 1, 2]])
    strict, event = (count_operations(SpikeTotals.from_stats(stats), config, rule) for rule in ("strict", "event"))
    zeros = [(5 * d_in - n) * d_out for (n, _), d_in, d_out in zip(summed_reads(), FAN_IN, FAN_OUT, strict=True)]
    per_layer = [0, sum(zeros[0:4]), sum(zeros[4:7]), sum(zeros[7:11]), sum(zeros[11:14]), 0]
    assert [s.count("mac") - e.count("mac") for s, e in zip(strict, event, strict=True)] == per_layer
    for s, e in zip(strict, event, strict=True):
        assert [s.count(k) for k in ("ac", "neuron", "elementwise")] == [
            e.count(k) for k in ("ac", "neuron", "elementwise")
        ]
        for ts, te in zip(s.terms, e.terms, strict=True):  # term by term, only the products differ
            assert ts.name == te.name and (ts.count == te.count or ts.kind == "mac")


def test_reads_are_required_where_a_rule_prices_them():
    config = tiny_config(**SHAPE, spike_placement="inputs")
    bare = SpikeStats(torch.tensor([[4], [3]]), torch.tensor([3, 2]), ("embedding",), 4)
    with pytest.raises(EnergyError, match="carry no projection reads"):
        energy_report(bare, config, "strict")
    residual = tiny_config(**SHAPE)
    bare = SpikeStats(torch.ones(2, 5, dtype=torch.long), torch.tensor([3, 2]), spike_layout(residual).sites, 4)
    assert energy_report(bare, residual, "strict").energy_j > 0  # strict on real inputs needs no reads
    with pytest.raises(EnergyError, match="carry no projection reads"):
        energy_report(bare, residual, "event")


def test_equal_bit_baseline_prices_the_block_products_as_int8_macs():
    config = tiny_config(**SHAPE, spike_placement="inputs")
    report = energy_report(stats_for(config, [[4], [3]]), config, "strict", ONE_PJ_EACH)
    baselines = {b.name: b for b in report.baselines}
    dense_products = 2 * 5 * (4 * 16 + 2 * 4 * 8 + 16)  # per block T·(4d² + 2dF + d²)
    off = baselines["spiking_off"].energy_j
    want = off - dense_products * 1e-12 + dense_products * INT8.mac_pj * 1e-12
    assert baselines["equal_bit_int8"].energy_j == pytest.approx(want, rel=1e-12)
    assert baselines["equal_bit_int8"].ratio == pytest.approx(want / report.energy_j)


def forced_model(threshold: float) -> SpikeGPTForCausalLM:
    config = tiny_config(spike_placement="inputs", input_spikes="binary", lif_threshold=threshold)
    return lively_weights_(SpikeGPTForCausalLM(config), seed=5).eval()


@pytest.mark.parametrize("threshold, fires", [(-1e9, True), (1e9, False)], ids=["always", "never"])
def test_receipts_of_forced_spikes_equal_the_hand_count(threshold, fires):
    """Every encoder fires at every element (or never): each product's strict ACs are T·d_in·d_out (or 0)."""
    model = forced_model(threshold)
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        stats = model(ids, output_spike_stats=True).spike_stats
    config = model.config
    d, hidden, tokens = config.n_embd, config.ffn_hidden, 21
    widths = [(d, d)] * 4 + [(d, hidden), (d, d), (hidden, d)]
    for name, read in zip(model.model.projections, stats.reads.sum(dim=0).tolist(), strict=True):
        d_in = hidden if name.endswith("ffn.value") else d
        assert read == ([tokens * d_in] * 2 if fires else [0, 0])
    layers = count_operations(SpikeTotals.from_stats(stats), config, "strict")
    for ops in layers[1:-1]:
        shapes = widths[:4] if ops.name.endswith(".att") else widths[4:]
        products = [t for t in ops.terms if t.name in ("key", "value", "receptance", "output")]
        assert [t.kind for t in products] == ["ac"] * len(shapes)
        assert sum(t.count for t in products) == (sum(tokens * i * o for i, o in shapes) if fires else 0)


def test_counts_past_two_to_the_24_stay_exact():
    """fp32 holds whole numbers exactly only below 2^24: the counters are int64 from the model to the report."""
    big = 2**24 + 1
    config = tiny_config(**SHAPE)
    sites = spike_layout(config).sites
    one = SpikeStats(
        torch.full((1, 5), big, dtype=torch.long),
        torch.tensor([2**22]),
        sites,
        4,
        torch.full((1, 14, 2), big, dtype=torch.long),
        PROJECTIONS,
        torch.tensor([3]),
    )
    total = one + one + one
    assert total.counts.dtype == torch.long and int(total.counts[0, 0]) == 3 * big
    totals = SpikeTotals.from_stats(SpikeStats.stack([total, one]))
    assert totals.spikes == (4 * big,) * 5
    assert totals.reads == ((4 * big, 4 * big),) * 14
    assert totals.head_tokens == 3 * 3 + 3
    report = energy_report(total, config, "strict", ONE_PJ_EACH)
    residual_acs = [t.count for layer in report.layers for t in layer.ops.terms if t.name == "residual"]
    assert residual_acs == [3 * big] * 4  # 50331651: an fp32 sum would give 50331648
    assert float(torch.tensor(3 * big, dtype=torch.float32)) != 3 * big


def test_model_counters_are_int64_and_carry_head_tokens():
    model = forced_model(0.5)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.inference_mode():
        stats = model(ids, output_spike_stats=True, logits_to_keep=1).spike_stats
    assert stats.counts.dtype == stats.reads.dtype == stats.head_tokens.dtype == torch.long
    assert stats.head_tokens.tolist() == [1, 1]
