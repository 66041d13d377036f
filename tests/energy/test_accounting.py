"""Operation counts and energies from hand-made spike statistics, checked against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from spikegpt.energy import HardwareProfile, count_operations, energy_report, vanilla_gpt_operations
from spikegpt.energy.accounting import SpikeTotals
from spikegpt.errors import EnergyError
from spikegpt.modeling.layout import spike_layout
from spikegpt.modeling.stats import SpikeStats

# d = 4, F = 8, V = 5; two sequences of 3 and 2 tokens: T = 5, T·d = 20 values per site.
CONFIG = tiny_config(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2)
SITES = spike_layout(CONFIG).sites  # embedding, blocks.0.att.lif, blocks.0.ffn.lif, blocks.1.att.lif, blocks.1.ffn.lif
ROW_SPIKES = [[4, 1, 2, 0, 3], [3, 2, 0, 1, 2]]  # per row and site
SPIKES = [7, 3, 2, 1, 5]  # their sums per site
ONE_PJ_EACH = HardwareProfile("unit", mac_pj=1.0, ac_pj=1.0, neuron_pj=1.0, elementwise_pj=1.0)
DISTINCT = HardwareProfile("distinct", mac_pj=1.0, ac_pj=10.0, neuron_pj=100.0, elementwise_pj=1000.0)


def hand_stats() -> SpikeStats:
    return SpikeStats(torch.tensor(ROW_SPIKES, dtype=torch.float32), torch.tensor([3, 2]), SITES, 4)


def ops_of(report) -> list[tuple[str, int, int, int, int]]:
    return [(layer.ops.name, *(layer.ops.count(k) for k in ("mac", "ac", "neuron", "elementwise"))) for layer in report]


def test_strict_counts_match_the_hand_count():
    report = energy_report(hand_stats(), CONFIG, "strict", ONE_PJ_EACH)
    # time mix: MAC K,V,R 3·5·16 + O 5·16 = 320; elementwise ln 100 + shift 120 + sigmoid 60 + WKV 380 + gate 20
    # channel mix: MAC K 5·4·8 + V 5·8·4 + R 5·16 = 400; elementwise ln 100 + shift 80 + ReLU² 80 + sigmoid 60 + gate 20
    assert ops_of(report.layers) == [
        ("embedding", 0, 2 * 7, 0, 20 + 60),  # threshold; ln0's two sums are accumulates of the 7 spikes
        ("blocks.0.att", 320, 3, 20, 680),
        ("blocks.0.ffn", 400, 2, 20, 340),
        ("blocks.1.att", 320, 1, 20, 680),
        ("blocks.1.ffn", 400, 5, 20, 340),
        ("head", 5 * 4 * 5, 0, 0, 100),
    ]
    assert report.tokens == 5 and report.head_tokens == 5
    assert [layer.ops.firing_rate for layer in report.layers] == [7 / 20, 3 / 20, 2 / 20, 1 / 20, 5 / 20, None]
    assert report.firing_rate == pytest.approx(18 / 100)
    assert report.firing_rate == pytest.approx(float(hand_stats().firing_rate()))


def test_paper_counts_match_the_hand_count():
    report = energy_report(hand_stats(), CONFIG, "paper", ONE_PJ_EACH)
    # time mix: K, V, R become R̂·3·T·d² = 3·d·S_input AC; WKV 6·T·d = 120 MAC; O stays 80 MAC
    # channel mix: K, V, R become R̂·T·(2dF + d²) = (2F + d)·S_input = 20·S_input AC
    assert ops_of(report.layers) == [
        ("embedding", 0, 14, 0, 80),
        ("blocks.0.att", 200, 12 * 7 + 3, 20, 300),
        ("blocks.0.ffn", 0, 20 * 3 + 2, 20, 340),
        ("blocks.1.att", 200, 12 * 2 + 1, 20, 300),
        ("blocks.1.ffn", 0, 20 * 1 + 5, 20, 340),
        ("head", 100, 0, 0, 100),
    ]
    assert [layer.ops.input_site for layer in report.layers[1:-1]] == list(SITES[:-1])


def test_rules_differ_exactly_in_the_table_1_terms():
    totals = SpikeTotals.from_stats(hand_stats())
    strict, paper = (count_operations(totals, CONFIG, rule) for rule in ("strict", "paper"))
    differing = {
        (s.name, a.name)
        for s, p in zip(strict, paper, strict=True)
        for a, b in zip(s.terms, p.terms, strict=True)
        if a != b
    }
    projections = {"key", "value", "receptance"}
    expected = {(f"blocks.{i}.att", t) for i in range(2) for t in (*projections, "wkv")}
    expected |= {(f"blocks.{i}.ffn", t) for i in range(2) for t in projections}
    assert differing == expected
    assert all(t.kind == "mac" for s in strict for t in s.terms if (s.name, t.name) in expected and t.name != "wkv")
    assert all(t.kind == "ac" for p in paper for t in p.terms if (p.name, t.name) in expected and t.name != "wkv")


def test_energy_prices_each_kind_with_its_profile_cost():
    report = energy_report(hand_stats(), CONFIG, "strict", DISTINCT)
    # totals: MAC 2·320 + 2·400 + 100; AC 14 + 11; neurons 4·20; elementwise 80 + 2·680 + 2·340 + 100
    assert (report.count("mac"), report.count("ac"), report.count("neuron"), report.count("elementwise")) == (
        1540,
        25,
        80,
        2220,
    )
    expected = (1540 * 1 + 25 * 10 + 80 * 100 + 2220 * 1000) * 1e-12
    assert report.energy_j == pytest.approx(expected, rel=1e-12)
    assert report.energy_j_per_token == pytest.approx(expected / 5, rel=1e-12)
    assert report.energy_j_per_generated_token is None
    assert sum(report.energy_by_kind().values()) == pytest.approx(expected, rel=1e-12)


def test_baselines_and_ratios_follow_the_counts():
    report = energy_report(hand_stats(), CONFIG, "paper", ONE_PJ_EACH)
    baselines = {b.name: b for b in report.baselines}
    # vanilla GPT, per layer: QKV 48·(3 + 2) + attention 8·(9 + 4) + scale 13 + softmax 26 + FFN 64·(3 + 2) = 703
    assert sum(t.count for t in vanilla_gpt_operations((3, 2), CONFIG)) == 2 * 703
    # spiking off: no threshold, neurons or ACs; ln0 5·T·d; each residual addition T·d elementwise
    assert baselines["spiking_off"].energy_j == pytest.approx((1540 + 2320) * 1e-12)
    total_ops = sum(report.count(k) for k in ("mac", "ac", "neuron", "elementwise"))
    assert report.energy_j == pytest.approx(total_ops * 1e-12)
    for baseline in report.baselines:
        assert baseline.ratio == pytest.approx(baseline.energy_j / report.energy_j, rel=1e-12)
    assert baselines["vanilla_gpt"].ratio == pytest.approx(1406 / total_ops, rel=1e-12)


def test_spiking_off_baseline_counts_by_hand():
    totals = SpikeTotals.from_stats(hand_stats())
    layers = count_operations(totals, CONFIG, "strict", spiking=False)
    assert [
        (layer.name, layer.count("mac"), layer.count("ac"), layer.count("neuron"), layer.count("elementwise"))
        for layer in layers
    ] == [
        ("embedding", 0, 0, 0, 100),
        ("blocks.0.att", 320, 0, 0, 700),
        ("blocks.0.ffn", 400, 0, 0, 360),
        ("blocks.1.att", 320, 0, 0, 700),
        ("blocks.1.ffn", 400, 0, 0, 360),
        ("head", 100, 0, 0, 100),
    ]


def test_head_tokens_and_generated_tokens():
    report = energy_report(SpikeTotals.from_stats(hand_stats()), CONFIG, "strict", ONE_PJ_EACH, 2, head_tokens=2)
    assert report.layers[-1].ops.count("mac") == 2 * 4 * 5
    assert report.energy_j_per_generated_token == pytest.approx(report.energy_j / 2)
    assert report.to_dict()["generated_tokens"] == 2


def test_ffn_pre_and_float_embedding_change_the_counted_work():
    config = tiny_config(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2, ffn_pre=True, binary_embedding=False)
    stats = SpikeStats(torch.tensor([SPIKES], dtype=torch.float32), torch.tensor([5]), spike_layout(config).sites, 4)
    layers = energy_report(stats, config, "paper", ONE_PJ_EACH).layers
    assert layers[0].ops.terms[0].name == "ln0" and layers[0].ops.count("ac") == 0  # a float embedding: no AC
    assert layers[1].ops.name == "blocks.0.ffn_pre"
    assert layers[1].ops.count("ac") == 20 * 7 + 3  # a channel mix scaled by the embedding's rate
    assert layers[1].ops.count("mac") == 0


def test_statistics_of_another_model_are_refused():
    with pytest.raises(EnergyError, match="do not come from this model"):
        energy_report(hand_stats(), tiny_config(n_embd=4, n_layer=3), "strict")
    with pytest.raises(EnergyError, match="unknown accounting rule 'loose'"):
        energy_report(hand_stats(), CONFIG, "loose")


def test_report_dict_has_the_keys_clients_rely_on():
    out = energy_report(hand_stats(), CONFIG, "strict").to_dict()
    for key in ("rule", "profile", "tokens", "firing_rate", "layers", "energy_j", "energy_j_per_token", "baselines"):
        assert key in out
    assert out["profile"] == "45nm-fp32" and out["rule"] == "strict"
    assert set(out["baselines"]) == {"spiking_off", "equal_bit_int8", "vanilla_gpt"}
    assert all({"energy_j", "ratio"} <= set(b) for b in out["baselines"].values())
    assert all({"name", "firing_rate", "mac", "ac", "energy_j"} <= set(layer) for layer in out["layers"])
    assert "memory traffic" in " ".join(out["excludes"]) and "not a measurement" in out["note"]


def test_vanilla_gpt_reads_a_long_text_in_context_windows():
    """A GPT with a 64-token context reads 150 tokens as windows of 64, 64 and 22: attention is quadratic in each
    window, not in the whole text; the per-token terms are unchanged."""
    config = tiny_config(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2, ctx_len=64)
    terms = {t.name: t.count for t in vanilla_gpt_operations((150,), config)}
    windows = (64, 64, 22)
    assert terms["attention"] == 2 * sum(2 * t * t * 4 for t in windows)
    assert terms["scale"] == 2 * sum(t * t for t in windows) and terms["softmax"] == 2 * sum(2 * t * t for t in windows)
    assert terms["qkv"] == 2 * 3 * 150 * 16 and terms["ffn"] == 2 * 2 * 150 * 4 * 8
    whole = {t.name: t.count for t in vanilla_gpt_operations((64,), config)}
    assert whole["attention"] == 2 * 2 * 64 * 64 * 4  # up to the context length, one window
