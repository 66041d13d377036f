"""Energy reports: operation counts priced by a hardware profile, per layer, per token and per request, with
baselines; ``to_dict()`` is the shape the server's ``"energy"`` field and ``spikegpt energy --json`` share."""

from __future__ import annotations

from dataclasses import dataclass

from ..modeling.config import SpikeGPTConfig
from ..modeling.stats import SpikeStats
from .accounting import (
    KINDS,
    PROJECTIONS,
    RULES,
    LayerOps,
    SpikeTotals,
    Term,
    count_operations,
    vanilla_gpt_operations,
)
from .profiles import INT8, HardwareProfile, resolve_profile

NOTE = (
    "Estimate, not a measurement: operation counts from the spikes measured on these tokens, priced with "
    "published energies per operation; see 'rule' for how operations were counted and 'excludes' for what is left "
    "out."
)

# Horowitz 2014 (ISSCC, 45 nm) puts a 64-bit SRAM read at ~10 pJ and a 64-bit DRAM read at 1.3-2.6 nJ, far above
# the arithmetic counted here; Yan et al. (arXiv 2409.08290) find an SNN beats an equal-bit quantized ANN only
# below ~6% spike rate once data movement is included.
EXCLUDES = (
    "memory traffic: reading weights, activations and the recurrent state (SRAM/DRAM), which usually costs more "
    "than the arithmetic",
    "static (leakage) power, clocking and control",
    "off-chip I/O and host communication; spike routing between cores",
    "tokenization, sampling and the embedding lookup (a table read)",
    "per-token scalar work inside LayerNorm (mean, reciprocal square root)",
)

BASELINES = {
    "spiking_off": "the same architecture with every spike function the identity: every product a MAC, no neurons",
    "equal_bit_int8": "a dense model of equal bit width: the spiking_off count with every block projection a dense "
    "int8 MAC (0.23 pJ, Horowitz ISSCC 2014, 45 nm) and the rest priced by this profile; Yan et al. (arXiv "
    "2409.08290): an SNN beats an equal-bit quantized network only below ~6% spike rate once data movement counts",
    "vanilla_gpt": "SpikeGPT, TMLR 2024, Table 1 formula for a GPT of the same depth and width over the same "
    "sequences, read in windows of the context length: 3Td^2 + 2T^2d + T^2 + 2T^2 + FFN MACs per layer and "
    "window of T tokens (no output projection, LayerNorm or head)",
}


# The terms of ``accounting`` that are products reading a weight matrix: a profile prices them at the model's
# weight width (``config.weight_bits``, None for float weights); every other term reads no weights.
WEIGHT_TERMS = frozenset(("key", "value", "receptance", "output", "head"))


def term_joules(term: Term, profile: HardwareProfile, weight_bits: int | None = None) -> float:
    """Energy of one operation of ``term``, at ``weight_bits`` if the term reads weights."""
    return profile.joules(term.kind, weight_bits if term.name in WEIGHT_TERMS else None)


def _energy(terms: tuple[Term, ...], profile: HardwareProfile, weight_bits: int | None = None) -> float:
    return sum(t.count * term_joules(t, profile, weight_bits) for t in terms)


def _equal_bit_int8(dense: list[LayerOps], profile: HardwareProfile, weight_bits: int | None = None) -> float:
    """The dense count ``dense`` with every block projection an int8 MAC, everything else priced by ``profile``
    (the head at the model's weight width, as in the model's own report)."""
    energy = 0.0
    for ops in dense:
        for t in ops.terms:
            int8 = ops.name != "head" and t.name in PROJECTIONS
            energy += t.count * (INT8.joules(t.kind) if int8 else term_joules(t, profile, weight_bits))
    return energy


@dataclass(frozen=True)
class LayerEnergy:
    """One row of a report: a layer's measured firing rate, its operations by kind and their energy."""

    ops: LayerOps
    profile: HardwareProfile
    weight_bits: int | None = None

    @property
    def energy_j(self) -> float:
        return _energy(self.ops.terms, self.profile, self.weight_bits)

    def energy_by_kind(self) -> dict[str, float]:
        return {
            kind: _energy(tuple(t for t in self.ops.terms if t.kind == kind), self.profile, self.weight_bits)
            for kind in KINDS
        }

    def to_dict(self, terms: bool = False) -> dict:
        out = {
            "name": self.ops.name,
            "site": self.ops.site,
            "firing_rate": self.ops.firing_rate,
            "spikes": self.ops.spikes,
            **{kind: self.ops.count(kind) for kind in KINDS},
            "energy_j": self.energy_j,
        }
        if self.ops.input_site is not None:
            out["rate_from"] = self.ops.input_site
        if terms:
            out["terms"] = [
                {
                    "name": t.name,
                    "kind": t.kind,
                    "count": t.count,
                    "energy_j": t.count * term_joules(t, self.profile, self.weight_bits),
                }
                for t in self.ops.terms
            ]
        return out


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    energy_j: float
    ratio: float | None  # baseline energy / the report's energy: > 1 means the spiking model is estimated cheaper

    def to_dict(self) -> dict:
        return {"energy_j": self.energy_j, "ratio": self.ratio, "description": self.description}


@dataclass(frozen=True)
class EnergyReport:
    """The energy estimate of some tokens under one rule and profile.

    tokens: tokens the model processed; generated_tokens: of a request, the tokens it generated (None when the
    report is not about a generation); head_tokens: positions whose logits were computed.
    """

    rule: str
    profile: HardwareProfile
    tokens: int
    generated_tokens: int | None
    head_tokens: int
    firing_rate: float
    layers: tuple[LayerEnergy, ...]
    baselines: tuple[Baseline, ...]
    weight_bits: int | None = None  # the width the products were priced at (None: float weights)
    excludes: tuple[str, ...] = EXCLUDES
    note: str = NOTE

    @property
    def rule_description(self) -> str:
        return RULES[self.rule]

    @property
    def energy_j(self) -> float:
        return sum(layer.energy_j for layer in self.layers)

    @property
    def energy_j_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens else None

    @property
    def energy_j_per_generated_token(self) -> float | None:
        return self.energy_j / self.generated_tokens if self.generated_tokens else None

    def count(self, kind: str) -> int:
        return sum(layer.ops.count(kind) for layer in self.layers)

    def energy_by_kind(self) -> dict[str, float]:
        return {kind: sum(layer.energy_by_kind()[kind] for layer in self.layers) for kind in KINDS}

    def to_dict(self, terms: bool = False) -> dict:
        """JSON-ready; ``terms`` adds each layer's operations job by job."""
        return {
            "rule": self.rule,
            "rule_description": self.rule_description,
            "profile": self.profile.name,
            "weight_bits": self.weight_bits,
            "tokens": self.tokens,
            "generated_tokens": self.generated_tokens,
            "head_tokens": self.head_tokens,
            "firing_rate": self.firing_rate,
            "layers": [layer.to_dict(terms) for layer in self.layers],
            "operations": {kind: self.count(kind) for kind in KINDS},
            "energy_by_kind_j": self.energy_by_kind(),
            "energy_j": self.energy_j,
            "energy_j_per_token": self.energy_j_per_token,
            "energy_j_per_generated_token": self.energy_j_per_generated_token,
            "baselines": {b.name: b.to_dict() for b in self.baselines},
            "excludes": list(self.excludes),
            "note": self.note,
        }


def energy_report(
    stats: SpikeStats | SpikeTotals,
    config: SpikeGPTConfig,
    rule: str = "strict",
    profile: str | HardwareProfile | None = None,
    generated_tokens: int | None = None,
    head_tokens: int | None = None,
) -> EnergyReport:
    """The energy report of a forward pass (or several, accumulated) from its spike statistics, read with one host
    transfer (or from totals already read). ``head_tokens``: positions whose logits were computed (default: every
    processed token); ``generated_tokens``: of a request, for the energy per generated token."""
    totals = SpikeTotals.from_stats(stats) if isinstance(stats, SpikeStats) else stats
    totals.check(config)
    profile = resolve_profile(profile)
    head_tokens = totals.tokens if head_tokens is None else head_tokens
    bits = config.weight_bits
    layers = tuple(LayerEnergy(ops, profile, bits) for ops in count_operations(totals, config, rule, head_tokens))
    energy = sum(layer.energy_j for layer in layers)
    spiking_off = count_operations(totals, config, "strict", head_tokens, spiking=False)
    baseline_energy = {  # spiking_off is this model, weights included; vanilla_gpt is the paper's float formula
        "spiking_off": sum(_energy(ops.terms, profile, bits) for ops in spiking_off),
        "equal_bit_int8": _equal_bit_int8(spiking_off, profile, bits),
        "vanilla_gpt": _energy(vanilla_gpt_operations(totals.row_tokens, config), profile),
    }
    baselines = tuple(
        Baseline(name, BASELINES[name], joules, joules / energy if energy else None)
        for name, joules in baseline_energy.items()
    )
    return EnergyReport(
        rule, profile, totals.tokens, generated_tokens, head_tokens, totals.firing_rate, layers, baselines, bits
    )


def energy_field(
    stats: SpikeStats,
    config: SpikeGPTConfig,
    generated_tokens: int,
    profile: str | HardwareProfile | None = None,
    cached_prompt_tokens: int = 0,
) -> dict:
    """The server's ``"energy"`` field for one request: both rules' reports from one host transfer.

    ``stats`` covers every token the model processed for the request; the head is counted at the positions whose
    logits the engine computed (``stats.head_tokens``: one per sampled token, plus every prompt position when the
    prompt's logprobs were asked for), or once per generated token for statistics that do not carry them.
    ``cached_prompt_tokens``: prompt tokens whose state came from the prefix-state cache, so were not computed (nor
    counted) for this request.
    """
    totals = SpikeTotals.from_stats(stats)
    profile = resolve_profile(profile)
    head = totals.head_tokens if totals.head_tokens is not None else generated_tokens
    reports = {rule: energy_report(totals, config, rule, profile, generated_tokens, head) for rule in RULES}
    return {
        "firing_rate": totals.firing_rate,
        "profile": profile.name,
        "tokens": totals.tokens,
        "generated_tokens": generated_tokens,
        "cached_prompt_tokens": cached_prompt_tokens,
        "rules": {rule: report.to_dict() for rule, report in reports.items()},
        "note": NOTE,
    }
