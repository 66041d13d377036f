"""Hardware profiles: the built-in figures, files that round-trip, and malformed files with clear errors."""

from __future__ import annotations

import json

import pytest

from spikegpt.energy import BUILTIN_PROFILES, DEFAULT_PROFILE, HardwareProfile, load_profile, resolve_profile
from spikegpt.errors import EnergyError

CUSTOM = HardwareProfile(
    name="my-chip",
    mac_pj=2.5,
    ac_pj=0.125,
    neuron_pj=3.0,
    elementwise_pj=1e-05,
    description='a "quoted" description, with unicode: µ',
    source="measured on our bench, 2025",
)

VALID = {"name": "x", "mac_pj": 1.0, "ac_pj": 0.5, "neuron_pj": 2, "elementwise_pj": 1.0}


def test_builtin_figures_carry_their_sources():
    fp32, fp16, int8, loihi = (BUILTIN_PROFILES[n] for n in ("45nm-fp32", "45nm-fp16", "45nm-int8", "loihi"))
    assert DEFAULT_PROFILE is fp32 and resolve_profile(None) is fp32
    assert (fp32.mac_pj, fp32.ac_pj, fp16.mac_pj, fp16.ac_pj, int8.mac_pj, int8.ac_pj) == (
        4.6,
        0.9,
        1.5,
        0.4,
        0.23,
        0.03,
    )
    assert fp32.neuron_pj == pytest.approx(4.6 + 2 * 0.9)  # a MAC and two adds per LIF update
    assert (loihi.ac_pj, loihi.neuron_pj) == (23.6, 81.0)
    assert all("Horowitz" in p.source for p in BUILTIN_PROFILES.values())
    assert "Davies" in loihi.source
    assert fp32.joules("mac") == pytest.approx(4.6e-12)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_profile_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"chip{suffix}"
    path.write_text(CUSTOM.to_toml() if suffix == ".toml" else json.dumps(CUSTOM.to_dict()), encoding="utf-8")
    assert load_profile(path) == CUSTOM
    assert resolve_profile(str(path)) == CUSTOM


def test_builtins_round_trip_through_toml(tmp_path):
    for profile in BUILTIN_PROFILES.values():
        path = tmp_path / f"{profile.name}.toml"
        path.write_text(profile.to_toml(), encoding="utf-8")
        assert load_profile(path) == profile


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.toml", "name = 'x'\nmac_pj = ", "not valid TOML"),
        ("broken.json", '{"name": "x", ', "not valid JSON"),
        ("list.json", "[1, 2]", "must be a table of fields"),
        ("missing.toml", "name = 'x'\nmac_pj = 1.0\n", "missing field(s) ac_pj, neuron_pj, elementwise_pj"),
        ("typo.json", json.dumps({**VALID, "mac_jp": 1}), "unknown field(s) mac_jp"),
        ("negative.json", json.dumps({**VALID, "ac_pj": -1}), "ac_pj must be a finite number of picojoules >= 0"),
        ("text.json", json.dumps({**VALID, "neuron_pj": "81 pJ"}), "neuron_pj must be a finite number"),
        ("flag.toml", "name = 'x'\nmac_pj = true\nac_pj = 1\nneuron_pj = 1\nelementwise_pj = 1\n", "mac_pj must be"),
        ("inf.toml", "name = 'x'\nmac_pj = inf\nac_pj = 1\nneuron_pj = 1\nelementwise_pj = 1\n", "mac_pj must be"),
        ("blank.json", json.dumps({**VALID, "name": "  "}), "name must not be empty"),
        ("number_name.json", json.dumps({**VALID, "name": 3}), "name must be a string"),
        ("profile.yaml", "name: x", "must end in .toml or .json"),
        ("latin1.toml", b"name = '\xe9'", "not valid TOML"),
    ],
)
def test_bad_profile_files_get_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(EnergyError) as info:
        load_profile(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(EnergyError, match=r"unknown profile 'tpu'.*45nm-fp32"):
        resolve_profile("tpu")
    with pytest.raises(EnergyError, match="cannot read the profile"):
        resolve_profile(tmp_path / "absent.toml")
