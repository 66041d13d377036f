"""The chip profiles shipped as data files, and products priced at the weight width a model uses."""

from __future__ import annotations

import tomllib

import pytest
import torch

from spikegpt import SpikeGPTConfig
from spikegpt.energy import BUILTIN_PROFILES, SpikeTotals, energy_report, load_profile
from spikegpt.energy.profiles import PROFILE_DATA, HardwareProfile, profile_from_dict
from spikegpt.errors import EnergyError


def test_every_profile_file_loads_with_its_source_and_what_it_leaves_out():
    files = sorted(PROFILE_DATA.glob("*.toml"))
    assert {f.stem for f in files} == {"openspike-130nm", "rram-cim-22nm"}
    for path in files:
        profile = load_profile(path)
        assert profile.name == path.stem and BUILTIN_PROFILES[profile.name] == profile
        assert profile.source and profile.description and profile.leaves_out
        assert profile_from_dict(tomllib.loads(profile.to_toml()), "round trip") == profile


def test_the_chip_figures_follow_from_their_papers():
    openspike, rram = BUILTIN_PROFILES["openspike-130nm"], BUILTIN_PROFILES["rram-cim-22nm"]
    assert "56.8 GOPS/W" in openspike.source and "130 nm" in openspike.source
    assert openspike.ac_pj == pytest.approx(1e12 / 56.8e9, rel=1e-3)  # one synaptic operation
    assert openspike.mac_pj == pytest.approx(8 * openspike.ac_pj)  # 8 bit-serial spike planes
    assert "Nature Electronics" in rram.source and "194.4" in rram.source and "15.6" in rram.source
    assert rram.mac_pj == pytest.approx(2 / 15.6e12 * 1e12, rel=1e-3)  # 8-bit input x 8-bit weight, 2 ops a MAC
    assert rram.ac_pj == pytest.approx(2 / 194.4e12 * 1e12, rel=1e-3)  # binary input


def test_products_are_priced_at_the_weight_width():
    fp32, int8, rram = (BUILTIN_PROFILES[n] for n in ("45nm-fp32", "45nm-int8", "rram-cim-22nm"))
    assert fp32.joules("mac") == fp32.joules("mac", 8) == fp32.joules("mac", 4) == pytest.approx(4.6e-12)
    assert fp32.joules("mac", 1) == pytest.approx(0.9e-12)  # ±1 weights: the multiply is a sign flip, an add
    assert int8.joules("mac", 4) == int8.joules("mac", 8) == pytest.approx(0.23e-12)  # the next width up
    assert rram.joules("mac", 1) == rram.joules("mac", 8)  # the macro's 8-bit cells, whatever is stored
    assert fp32.joules("elementwise", 1) == fp32.joules("elementwise")


def test_the_report_prices_only_weight_products_at_the_weight_width():
    def report(bits):
        config = SpikeGPTConfig(vocab_size=50, n_layer=2, n_embd=16, weight_bits=bits)
        sites = ("embedding", "blocks.0.att.lif", "blocks.0.ffn.lif", "blocks.1.att.lif", "blocks.1.ffn.lif")
        totals = SpikeTotals(sites, (40, 10, 20, 10, 20), (10,), 16)
        return energy_report(totals, config, "strict", "45nm-fp32")

    float_report, binary = report(None), report(1)
    assert binary.weight_bits == 1 and binary.to_dict()["weight_bits"] == 1
    weight_macs = sum(
        t.count for layer in binary.layers for t in layer.ops.terms if t.kind == "mac" and t.name != "wkv"
    )
    saved = weight_macs * (4.6 - 0.9) * 1e-12
    assert float_report.energy_j - binary.energy_j == pytest.approx(saved, rel=1e-9)
    assert binary.energy_by_kind()["elementwise"] == float_report.energy_by_kind()["elementwise"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"x": 1.0}, "not a weight width"),
        ({"0": 1.0}, "not a weight width"),
        ({"8": -1.0}, "finite number of picojoules"),
        ([1.0], "must be a table"),
    ],
)
def test_width_tables_are_validated(table, message):
    data = {"name": "x", "mac_pj": 1.0, "ac_pj": 0.5, "neuron_pj": 2.0, "elementwise_pj": 1.0}
    with pytest.raises(EnergyError, match=message):
        profile_from_dict({**data, "mac_pj_by_weight_bits": table}, "test.toml")


def test_list_profiles_shows_the_chips(capsys):
    from spikegpt.cli import main

    assert main(["energy", "--list-profiles"]) == 0
    listed = capsys.readouterr().out
    for name in ("openspike-130nm", "rram-cim-22nm", "45nm-fp32", "loihi"):
        assert f'name = "{name}"' in listed
    assert "[mac_pj_by_weight_bits]" in listed and "leaves_out" in listed


def test_a_profile_object_round_trips_its_width_tables():
    profile = HardwareProfile("p", 1.0, 0.5, 2.0, 1.0, mac_pj_by_weight_bits=((1, 0.25), (8, 0.75)))
    assert profile_from_dict(tomllib.loads(profile.to_toml()), "p") == profile
    assert profile.to_dict()["mac_pj_by_weight_bits"] == {"1": 0.25, "8": 0.75}
    assert torch.tensor(profile.joules("mac", 4)) == pytest.approx(0.75e-12)
