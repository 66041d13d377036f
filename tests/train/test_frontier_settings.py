"""The frontier's settings files (``bench/frontier*.yaml``): every setting is a valid
training run, so a typo fails here and not hours into ``bench/frontier.py``; and the table renders from a JSON."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from spikegpt import SpikeGPTConfig
from spikegpt.modeling.layout import spike_layout
from spikegpt.train.config import make_config, read_config_file

BENCH = Path(__file__).resolve().parents[2] / "bench"


def frontier_module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("frontier", BENCH / "frontier.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # (its dataclasses look their module up)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", ["frontier.yaml", "frontier-pilot.yaml", "frontier-wikitext2.yaml"])
def test_every_setting_is_a_valid_run(name):
    frontier = frontier_module()
    plan = frontier.read_plan(BENCH / name)
    assert len(plan.settings) >= {"frontier.yaml": 12, "frontier-pilot.yaml": 5}.get(name, 1)
    shipped = read_config_file(BENCH / name).get("shipped")
    assert shipped is None or shipped in {s.name for s in plan.settings}
    if plan.twin_training is not None:  # a twin the plan trains: a valid run with spiking off
        config = frontier.run_config(plan, plan.twin_training, None)
        make_config({**config, "dataset": "corpus.txt"}, {}, source="twin").run_length_given()
        assert config["model"]["spiking"] is False and plan.twin_steps == config["max_steps"]
        plan.twin_model = "spikegpt-shakespeare-twin"  # (a stand-in for the settings' run configs below)
    for setting in plan.settings:
        if setting.model is not None:  # trained before: a model that exists, with its training steps
            from spikegpt.train.trainer import model_source

            assert (Path(model_source(setting.model)) / "config.json").is_file() and setting.steps > 0
            continue
        config = frontier.run_config(plan, setting, None)
        cfg = make_config({**config, "dataset": "corpus.txt"}, {}, source=setting.name)
        cfg.run_length_given()
        model = spike_layout(SpikeGPTConfig(vocab_size=66, **cfg.fresh_model_fields()))  # every field is a real one
        if setting.uses_twin("init_from"):
            assert model.spiking_inputs, f"{setting.name}: a conversion must turn spiking on"
        if "sparsity penalty" in frontier.aids_of(config) or "scale annealing" in frontier.aids_of(config):
            assert model.spiking_inputs, setting.name


def test_the_table_renders_from_a_results_json():
    frontier = frontier_module()
    read = {"zero_fraction": 0.9, "spikes_per_input": 0.08}
    model = {
        "name": "a", "input_spikes": "counts", "spike_count_max": 1, "spike_count_scale": 0.2,
        "spike_placement": "inputs", "aids": ["conversion"], "steps": 600, "steps_total": 1800,
        "bits_per_byte": 2.1, "gap_to_twin": 0.05, "input_zero_fraction": 0.91, "spikes_per_input": 0.09,
        "by_kind": {"att.key": read, "ffn.value": read}, "goals": {"x": True, "y": False},
        "energy": {
            "strict": {"j_per_token": 1e-6, "x_vs_equal_bit_int8": 1.2, "with_data_movement": None},
            "event": {"j_per_token": 1e-6, "x_vs_equal_bit_int8": 1.2,
                      "with_data_movement": {"j_per_token": 3e-4, "x_vs_equal_bit_int8": 3.5}},
        },
    }  # fmt: skip
    twin = {"name": "twin", "steps_total": 1200, "bits_per_byte": 2.0, "input_zero_fraction": 0.28}
    table = frontier.markdown({"twin": twin, "int8_twin": twin, "models": [model], "energy_tokens": 64})
    assert "| a | counts K 1, k 0.2 | conversion | 600 (1800) | 2.1000 | +5.0% | 0.910 | 0.090 " in table
    assert "| 1.00 µJ · 1.20× | 1.00 µJ · 1.20× (300.00 µJ · 3.50×) |" in table and "| 1/2 |" in table
    assert "0.90 / 0.080" in table


def test_the_goals_count_energy_with_memory_and_decoding_only_where_measured():
    frontier = frontier_module()
    row = {"gap_to_twin": 0.02, "input_zero_fraction": 0.93, "spikes_per_input": 0.07}
    assert list(frontier.goals(row).values()) == [True, True, True]
    ratios = {"strict": 1.01, "event": 2.9}
    row["energy"] = {rule: {"with_data_movement": {"x_vs_equal_bit_int8": x}} for rule, x in ratios.items()}
    row["decode_speedup"] = 2.0
    met = frontier.goals(row)
    assert len(met) == 6 and [v for k, v in met.items() if "energy" in k] == [True, False] and list(met.values())[-1]
