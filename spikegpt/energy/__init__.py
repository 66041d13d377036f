"""Energy estimates: measured spikes → operation counts and weight bytes read → energy, under a named accounting
rule and hardware profile.

    out = model(ids, output_spike_stats=True)
    report = energy_report(out.spike_stats, model.config, rule="event", profile="45nm-fp16")
    report.energy_j, report.data_movement_j, report.total_j, report.to_dict()

- ``accounting``: what the forward computes, counted operation by operation, under the rules ``strict`` (an
  accumulate only where an operand really is a binary spike), ``paper`` (the SpikeGPT paper's Table 1 terms) and
  ``event`` (event-driven hardware: zero inputs cost nothing), the weight rows each product read (dense hardware:
  every row; event-driven: the rows of nonzero inputs), and the baselines (the same model with spiking off, an
  equal-bit int8 model, the paper's vanilla-GPT formula). Its docstring is the full statement of the counting.
- ``profiles``: energy per operation kind and per byte of weights read from SRAM or DRAM on a given technology,
  built in (45 nm fp32/fp16/int8, Loihi, OpenSpike, an RRAM macro) or from a TOML/JSON file.
- ``report``: the priced result (operations, data movement, total), per layer, per token and per request, with
  what it leaves out; ``energy_field`` is the server's per-request ``"energy"`` field (every rule).
- ``measure``: spike statistics of a model reading a long text in chunks; ``render``: table and figure.

Every figure is an estimate from operation counts and bytes read, never a measurement of a chip.
"""

from .accounting import (
    KINDS,
    RULES,
    LayerOps,
    SpikeTotals,
    Term,
    WeightRead,
    WeightWidths,
    count_operations,
    vanilla_gpt_operations,
)
from .measure import read_spike_stats
from .profiles import BUILTIN_PROFILES, DEFAULT_PROFILE, HardwareProfile, load_profile, resolve_profile
from .report import EXCLUDES, NOTE, Baseline, EnergyReport, LayerEnergy, energy_field, energy_report

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_PROFILE",
    "EXCLUDES",
    "KINDS",
    "NOTE",
    "RULES",
    "Baseline",
    "EnergyReport",
    "HardwareProfile",
    "LayerEnergy",
    "LayerOps",
    "SpikeTotals",
    "Term",
    "WeightRead",
    "WeightWidths",
    "count_operations",
    "energy_field",
    "energy_report",
    "load_profile",
    "read_spike_stats",
    "resolve_profile",
    "vanilla_gpt_operations",
]
