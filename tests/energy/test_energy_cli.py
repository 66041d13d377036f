"""``spikegpt energy`` end to end, as a user runs it: a subprocess on a saved model directory."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spikegpt.cli import main
from spikegpt.energy import BUILTIN_PROFILES

SPIKEGPT = str(Path(sys.executable).parent / "spikegpt")


def spikegpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SPIKEGPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_json_report_and_plot(tiny_model_dir, tmp_path):
    plot = tmp_path / "energy.png"
    prompt = "To be, or not to be: that is the question.\n"
    done = spikegpt(
        "energy", "--model", str(tiny_model_dir), "--prompt", prompt, "--rule", "paper", "--json", "--plot", str(plot),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rule"] == "paper" and report["profile"] == "45nm-fp32"
    assert report["tokens"] == len(prompt)  # a character tokenizer
    assert 0 < report["firing_rate"] < 1
    assert report["energy_j"] > 0
    assert report["energy_j_per_token"] == pytest.approx(report["energy_j"] / report["tokens"])
    assert [layer["name"] for layer in report["layers"]] == [
        "embedding", "blocks.0.att", "blocks.0.ffn", "blocks.1.att", "blocks.1.ffn", "head",
    ]  # fmt: skip
    for layer in report["layers"]:
        assert {"name", "firing_rate", "mac", "ac", "energy_j", "terms"} <= set(layer)
    assert sum(layer["energy_j"] for layer in report["layers"]) == pytest.approx(report["energy_j"])
    for baseline in report["baselines"].values():
        assert baseline["ratio"] == pytest.approx(baseline["energy_j"] / report["energy_j"])
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_table_from_a_text_file_with_a_profile_file(tiny_model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("All the world's a stage,\nAnd all the men and women merely players;\n" * 3, encoding="utf-8")
    profile = tmp_path / "fp16.toml"
    profile.write_text(BUILTIN_PROFILES["45nm-fp16"].to_toml().replace('"45nm-fp16"', '"my-fp16"'), encoding="utf-8")
    done = spikegpt(
        "energy", "--model", str(tiny_model_dir), "--text", str(text), "--profile", str(profile),
        "--chunk-tokens", "16", "--max-tokens", "100",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "rule: strict" in out and "profile: my-fp16" in out and "not a measurement" in out
    assert "100 tokens processed" in out
    for row in ("embedding", "blocks.1.ffn", "head", "total", "spiking_off", "vanilla_gpt", "excludes: memory"):
        assert row in out


def test_bad_profile_is_one_line_without_traceback(tiny_model_dir, tmp_path, capsys):
    profile = tmp_path / "bad.json"
    profile.write_text('{"name": "bad", "mac_pj": 1}', encoding="utf-8")
    assert main(["energy", "--model", str(tiny_model_dir), "--prompt", "hi", "--profile", str(profile)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"spikegpt energy: error: {profile}: missing field(s) ac_pj, neuron_pj, elementwise_pj "
        "(energies in picojoules per operation)"
    ]


def test_list_profiles_prints_loadable_toml(capsys):
    assert main(["energy", "--list-profiles"]) == 0
    printed = capsys.readouterr().out
    parsed = [tomllib.loads(chunk) for chunk in printed.split("\n\n")]
    assert [p["name"] for p in parsed] == list(BUILTIN_PROFILES)
    assert parsed[0]["mac_pj"] == 4.6


def test_text_is_required_unless_listing(capsys):
    assert main(["energy"]) == 1
    assert capsys.readouterr().err.strip() == (
        "spikegpt energy: error: give the text to read: --text FILE or --prompt TEXT"
    )


def test_the_energy_guides_snippet_runs_as_it_is(tmp_path):
    """The energy guide's Python example of energy_report, copied as a user would, in a fresh interpreter."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "spikes" / "energy.md").read_text()
    blocks = guide.split("```python\n")[1:]
    (snippet,) = [b.split("```")[0] for b in blocks if "energy_report(" in b.split("```")[0]]
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    energy_j = float(result.stdout.split()[0])
    assert 0 < energy_j < 1


def test_json_gives_operations_data_movement_and_totals_with_the_memory_forced(tiny_model_dir, capsys):
    args = ["energy", "--model", str(tiny_model_dir), "--prompt", "To be, or not", "--rule", "event", "--json"]
    assert main([*args, "--weight-memory", "sram"]) == 0
    in_sram = json.loads(capsys.readouterr().out)
    assert main([*args, "--weight-memory", "dram"]) == 0
    in_dram = json.loads(capsys.readouterr().out)
    for report, pj_per_byte in ((in_sram, 12.5), (in_dram, 162.5)):  # the 45 nm profile's figures
        assert report["weight_memory"] in ("sram", "dram") and report["reads_rule"] == "event"
        assert report["data_movement_j"] == pytest.approx(report["weight_bytes"] * pj_per_byte * 1e-12)
        assert report["total_j"] == pytest.approx(report["energy_j"] + report["data_movement_j"])
        assert sum(layer["weight_bytes"] for layer in report["layers"]) == report["weight_bytes"]
        for layer in report["layers"]:
            assert sum(read["bytes"] for read in layer["reads"]) == layer["weight_bytes"]
        for baseline in report["baselines"].values():
            assert baseline["total_j"] == pytest.approx(baseline["energy_j"] + baseline["data_movement_j"])
            assert baseline["total_ratio"] == pytest.approx(baseline["total_j"] / report["total_j"])
    assert (in_sram["weight_memory"], in_dram["weight_memory"]) == ("sram", "dram")
    assert in_sram["weight_bytes"] == in_dram["weight_bytes"] and in_sram["energy_j"] == in_dram["energy_j"]


def test_forcing_a_memory_the_profile_does_not_price_is_one_line(tiny_model_dir, tmp_path, capsys):
    profile = tmp_path / "ops-only.json"
    profile.write_text('{"name": "ops-only", "mac_pj": 1, "ac_pj": 1, "neuron_pj": 1, "elementwise_pj": 1}')
    args = ["energy", "--model", str(tiny_model_dir), "--prompt", "hi", "--profile", str(profile)]
    assert main([*args, "--weight-memory", "dram"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "spikegpt energy: error: profile ops-only: weight_memory 'dram' needs dram_pj_per_byte (a profile that "
        "prices data movement gives the price of the memory its weights come from, and for 'auto' the SRAM capacity)"
    ]
