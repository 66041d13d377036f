"""The compare table's figures by hand (``spikegpt.energy.compare``): made-up runs give the values, the ratios to the
first model and the text the terminal shows; the share of zero inputs on made-up reads; bits per byte counting every
UTF-8 byte."""

from __future__ import annotations

import math

import torch
from conftest import tiny_config

from spikegpt.energy import energy_field
from spikegpt.energy.accounting import SpikeTotals
from spikegpt.energy.compare import FIGURES, Run, bits_per_byte, compare_table, format_table
from spikegpt.modeling.layout import spike_layout
from spikegpt.modeling.stats import SpikeStats

SHAPE = dict(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2)
RULES = ("strict", "paper", "event")


def energy(total_per_token: float, firing_rate: float, zero: float | None) -> dict:
    rules = {rule: {"total_j_per_generated_token": total_per_token * k} for k, rule in enumerate(RULES, start=1)}
    return {"firing_rate": firing_rate, "input_zero_fraction": zero, "rules": rules}


def test_bits_per_byte_count_every_byte():
    assert bits_per_byte([math.log(0.5)] * 4, "abcd") == 1.0
    assert bits_per_byte([math.log(0.5)] * 2, "éa") == 2 / 3  # é is two bytes


def test_the_table_holds_each_runs_figures_and_their_ratio_to_the_first():
    runs = [
        Run("a", 10, energy(2e-3, 0.2, 0.25), "xy", [math.log(0.5)] * 2),
        Run("b", 8, energy(1e-3, 0.5, 0.5), "xy", [math.log(0.25)] * 2),
        None,  # its run failed
    ]
    table = compare_table(runs, ["a", "b", "c"])
    assert [f["key"] for f in table["figures"]] == [f.key for f in FIGURES] and table["reference"] == "a"
    a, b, c = table["rows"]
    assert b["values"] == {
        "tokens": 8,
        "energy_per_token.strict": 1e-3,
        "energy_per_token.paper": 2e-3,
        "energy_per_token.event": 3e-3,
        "firing_rate": 0.5,
        "input_zero_fraction": 0.5,
        "bits_per_byte": 2.0,
    }
    assert b["relative"]["tokens"] == 0.8 and b["relative"]["bits_per_byte"] == 2.0
    assert b["relative"]["energy_per_token.event"] == 0.5 and set(a["relative"].values()) == {1.0}
    assert set(c["values"].values()) == {None} and set(c["relative"].values()) == {None}
    lines = format_table(table).splitlines()
    assert lines[0].split() == ["model", "tokens", "energy/token", "(strict)", "energy/token", "(paper)",
                                "energy/token", "(event)", "firing", "rate", "zero", "inputs", "bits/byte"]  # fmt: skip
    assert lines[1].split() == ["a", "10", "2", "mJ", "4", "mJ", "6", "mJ", "0.200", "0.250", "1.0000"]
    assert lines[2].split() == ["b", "8", "1", "mJ", "2", "mJ", "3", "mJ", "0.500", "0.500", "2.0000"]
    assert lines[3].split() == ["vs", "a", "0.80×", "0.50×", "0.50×", "0.50×", "2.50×", "2.00×", "2.00×"]
    assert lines[4].split() == ["c", *["-"] * 7] and lines[5].split() == ["vs", "a", *["-"] * 7]


def test_without_a_continuation_there_are_no_bits_per_byte():
    table = compare_table([Run("a", 3, energy(1e-3, 0.1, None)), Run("b", 3, energy(1e-3, 0.1, None))], ["a", "b"])
    assert table["rows"][0]["values"]["bits_per_byte"] is None
    assert table["rows"][1]["relative"]["input_zero_fraction"] is None


def test_the_share_of_zero_inputs_counts_every_products_input_elements():
    config = tiny_config(**SHAPE)
    layout = spike_layout(config)
    fan_ins = [product.fan_in for product in layout.products]
    nonzero = [[i + 1, 0] for i in range(len(fan_ins))]  # made-up reads: (nonzero elements, summed counts)
    tokens = 3
    stats = SpikeStats(
        torch.zeros(1, len(layout.sites), dtype=torch.long),
        torch.tensor([tokens]),
        layout.sites,
        config.n_embd,
        torch.tensor([nonzero], dtype=torch.long),
        layout.product_names,
    )
    elements = tokens * sum(fan_ins)
    expected = 1 - sum(n for n, _ in nonzero) / elements
    assert SpikeTotals.from_stats(stats).input_zero_fraction(config) == expected
    assert energy_field(stats, config, 1)["input_zero_fraction"] == expected
    without_reads = SpikeStats(stats.counts, stats.tokens, layout.sites, config.n_embd)
    assert SpikeTotals.from_stats(without_reads).input_zero_fraction(config) is None
