"""Energy reports: operation counts priced by a hardware profile, per layer, per token and per request, with
baselines; ``to_dict()`` is the shape the server's ``"energy"`` field and ``spikegpt energy --json`` share."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..modeling.config import SpikeGPTConfig
from ..modeling.stats import SpikeStats
from .accounting import (
    KINDS,
    PROJECTIONS,
    READS,
    RULE_READS,
    RULES,
    LayerOps,
    SpikeTotals,
    Term,
    WeightRead,
    WeightWidths,
    count_operations,
    stored_weight_bytes,
    vanilla_gpt_operations,
    vanilla_gpt_reads,
    vanilla_gpt_weight_bytes,
)
from .profiles import INT8, HardwareProfile, resolve_profile

NOTE = (
    "Estimate, not a measurement: operation counts and weight bytes read, from the spikes measured on these "
    "tokens, priced with published energies per operation and per byte; 'energy_j' is the operations, "
    "'data_movement_j' the weight reads, 'total_j' both; see 'rule' and 'reads_rule' for how they were counted and "
    "'excludes' for what is left out."
)

# Data movement counts the weights the products read (Horowitz 2014, ISSCC, 45 nm: a 64-bit SRAM read ~10-100 pJ,
# a DRAM read 1.3-2.6 nJ, far above the arithmetic; Yan et al., arXiv 2409.08290: an SNN beats an equal-bit
# quantized ANN only below ~6% spike rate once data movement is included). The rest of the traffic is left out.
EXCLUDES = (
    "memory traffic other than weight reads: activations and the recurrent state (read and written every token), "
    "per-channel parameters (LayerNorm affines, decays, token-shift ratios, quantization scales), writes",
    "reuse of a weight read across the tokens of a batch or a prefill chunk (each token reads its weights anew, as "
    "batch-1 decoding does)",
    "static (leakage) power, clocking and control",
    "off-chip I/O and host communication; spike routing between cores",
    "tokenization and sampling",
    "per-token scalar work inside LayerNorm (mean, reciprocal square root)",
)
NO_MEMORY_PRICES = "data movement: this profile gives no memory prices, so weight bytes are counted but not priced"

BASELINES = {
    "spiking_off": "the same architecture with every spike function the identity: every product a MAC, no neurons; "
    "dense reading of every weight row at the model's widths",
    "equal_bit_int8": "a dense model of equal bit width: the spiking_off count with every block projection a dense "
    "int8 MAC (0.23 pJ, Horowitz ISSCC 2014, 45 nm) reading 8-bit weights, the rest priced by this profile; Yan et "
    "al. (arXiv 2409.08290): an SNN beats an equal-bit quantized network only below ~6% spike rate once data "
    "movement counts",
    "vanilla_gpt": "SpikeGPT, TMLR 2024, Table 1 formula for a GPT of the same depth and width over the same "
    "sequences, read in windows of the context length: 3Td^2 + 2T^2d + T^2 + 2T^2 + FFN MACs per layer and "
    "window of T tokens (no output projection, LayerNorm or head); its Q, K, V and FFN matrices read densely at "
    "the profile's float width",
}


# The terms of ``accounting`` that are products reading a weight matrix: a profile prices them at the model's
# weight width (``config.weight_bits``, None for float weights); every other term reads no weights.
WEIGHT_TERMS = frozenset(("key", "value", "receptance", "output", "head"))


def term_joules(term: Term, profile: HardwareProfile, weight_bits: int | None = None) -> float:
    """Energy of one operation of ``term``, at ``weight_bits`` if the term reads weights."""
    return profile.joules(term.kind, weight_bits if term.name in WEIGHT_TERMS else None)


def _energy(terms: tuple[Term, ...], profile: HardwareProfile, weight_bits: int | None = None) -> float:
    return sum(t.count * term_joules(t, profile, weight_bits) for t in terms)


def read_joules(read: WeightRead, profile: HardwareProfile, memory: str | None) -> float:
    """Energy of the weight bytes ``read`` fetched from ``memory`` (nothing where the profile's price of the
    operation already includes its read, or the profile prices no memory)."""
    return read.bytes * profile.joules_per_byte(memory, read.kind)


def _movement(reads: tuple[WeightRead, ...], profile: HardwareProfile, memory: str | None) -> float:
    return sum(read_joules(r, profile, memory) for r in reads)


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
    """One row of a report: a layer's measured firing rate, its operations by kind and their energy, the weight
    bytes it read and their energy (data movement) from ``memory``."""

    ops: LayerOps
    profile: HardwareProfile
    weight_bits: int | None = None
    memory: str | None = None

    @property
    def energy_j(self) -> float:
        """Energy of the operations."""
        return _energy(self.ops.terms, self.profile, self.weight_bits)

    @property
    def data_movement_j(self) -> float:
        return _movement(self.ops.reads, self.profile, self.memory)

    @property
    def total_j(self) -> float:
        return self.energy_j + self.data_movement_j

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
            "weight_bytes": self.ops.weight_bytes,
            "data_movement_j": self.data_movement_j,
            "total_j": self.total_j,
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
            out["reads"] = [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "rows": r.rows,
                    "row_bytes": r.row_bytes,
                    "bytes": r.bytes,
                    "data_movement_j": read_joules(r, self.profile, self.memory),
                }
                for r in self.ops.reads
            ]
        return out


@dataclass(frozen=True)
class Baseline:
    """A baseline's energy beside the report's: operations (``energy_j``, ``ratio`` as before data movement was
    counted) and with its own weight reads (``data_movement_j`` from ``weight_memory``, ``total_j``,
    ``total_ratio``). Ratios are baseline / the report's: > 1 means the spiking model is estimated cheaper."""

    name: str
    description: str
    energy_j: float
    ratio: float | None
    weight_bytes: int = 0
    weight_memory: str | None = None
    data_movement_j: float = 0.0
    total_ratio: float | None = None

    @property
    def total_j(self) -> float:
        return self.energy_j + self.data_movement_j

    def to_dict(self) -> dict:
        return {
            "energy_j": self.energy_j,
            "ratio": self.ratio,
            "weight_bytes": self.weight_bytes,
            "weight_memory": self.weight_memory,
            "data_movement_j": self.data_movement_j,
            "total_j": self.total_j,
            "total_ratio": self.total_ratio,
            "description": self.description,
        }


@dataclass(frozen=True)
class EnergyReport:
    """The energy estimate of some tokens under one rule and profile.

    tokens: tokens the model processed; generated_tokens: of a request, the tokens it generated (None when the
    report is not about a generation); head_tokens: positions whose logits were computed; weight_widths: the bits
    per weight the reads were counted at; weight_memory: where the weights were read from ("sram", "dram", None
    when the profile prices no memory), decided by the profile's rule on ``stored_weight_bytes``, the bytes of all
    the model's weight matrices at those widths.
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
    weight_widths: WeightWidths | None = None
    weight_memory: str | None = None
    stored_weight_bytes: int = 0
    excludes: tuple[str, ...] = EXCLUDES
    note: str = NOTE

    @property
    def rule_description(self) -> str:
        return RULES[self.rule]

    @property
    def reads_rule(self) -> str:
        """How the rule's hardware reads weights: "dense" or "event" (``accounting.READS``)."""
        return RULE_READS[self.rule]

    @property
    def energy_j(self) -> float:
        """Energy of the operations (as before data movement was counted)."""
        return sum(layer.energy_j for layer in self.layers)

    @property
    def data_movement_j(self) -> float:
        return sum(layer.data_movement_j for layer in self.layers)

    @property
    def total_j(self) -> float:
        return self.energy_j + self.data_movement_j

    @property
    def weight_bytes(self) -> int:
        return sum(layer.ops.weight_bytes for layer in self.layers)

    @property
    def energy_j_per_token(self) -> float | None:
        return _per(self.energy_j, self.tokens)

    @property
    def energy_j_per_generated_token(self) -> float | None:
        return _per(self.energy_j, self.generated_tokens)

    @property
    def total_j_per_token(self) -> float | None:
        return _per(self.total_j, self.tokens)

    @property
    def total_j_per_generated_token(self) -> float | None:
        return _per(self.total_j, self.generated_tokens)

    def count(self, kind: str) -> int:
        return sum(layer.ops.count(kind) for layer in self.layers)

    def energy_by_kind(self) -> dict[str, float]:
        return {kind: sum(layer.energy_by_kind()[kind] for layer in self.layers) for kind in KINDS}

    def to_dict(self, terms: bool = False) -> dict:
        """JSON-ready; ``terms`` adds each layer's operations job by job and its weight reads matrix by matrix."""
        return {
            "rule": self.rule,
            "rule_description": self.rule_description,
            "reads_rule": self.reads_rule,
            "reads_rule_description": READS[self.reads_rule],
            "profile": self.profile.name,
            "weight_bits": self.weight_bits,
            "weight_widths": None if self.weight_widths is None else self.weight_widths.to_dict(),
            "weight_memory": self.weight_memory,
            "stored_weight_bytes": self.stored_weight_bytes,
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
            "weight_bytes": self.weight_bytes,
            "data_movement_j": self.data_movement_j,
            "total_j": self.total_j,
            "total_j_per_token": self.total_j_per_token,
            "total_j_per_generated_token": self.total_j_per_generated_token,
            "baselines": {b.name: b.to_dict() for b in self.baselines},
            "excludes": list(self.excludes),
            "note": self.note,
        }


def _per(joules: float, tokens: int | None) -> float | None:
    return joules / tokens if tokens else None


def _ratio(baseline: float, own: float) -> float | None:
    return baseline / own if own else None


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
    widths = WeightWidths.of(config, profile.float_weight_bits)
    stored = stored_weight_bytes(config, widths)
    memory = profile.memory_for(stored)
    counted = count_operations(totals, config, rule, head_tokens, widths=widths)
    layers = tuple(LayerEnergy(ops, profile, bits, memory) for ops in counted)
    report = EnergyReport(
        rule,
        profile,
        totals.tokens,
        generated_tokens,
        head_tokens,
        totals.firing_rate,
        layers,
        baselines=(),
        weight_bits=bits,
        weight_widths=widths,
        weight_memory=memory,
        stored_weight_bytes=stored,
        excludes=EXCLUDES if profile.prices_memory else (*EXCLUDES, NO_MEMORY_PRICES),
    )
    return replace(report, baselines=_baselines(report, totals, config, widths))


def _baselines(
    report: EnergyReport, totals: SpikeTotals, config: SpikeGPTConfig, widths: WeightWidths
) -> tuple[Baseline, ...]:
    """The three baselines of ``report``, each with its operations and its own weight reads (module docstring of
    ``accounting``): spiking_off is this model, weights included; equal_bit_int8 its block products at 8 bits;
    vanilla_gpt the paper's formula at the profile's float width."""
    profile, bits, head = report.profile, report.weight_bits, report.head_tokens
    dense = count_operations(totals, config, "strict", head, spiking=False, widths=widths)
    int8_widths = WeightWidths(8, widths.head, widths.embedding)
    int8_reads = count_operations(totals, config, "strict", head, spiking=False, widths=int8_widths)
    float_bits = profile.float_weight_bits
    priced = {  # name: (operations' energy, weight reads, the bytes of its weight matrices)
        "spiking_off": (
            sum(_energy(ops.terms, profile, bits) for ops in dense),
            tuple(r for ops in dense for r in ops.reads),
            report.stored_weight_bytes,
        ),
        "equal_bit_int8": (
            _equal_bit_int8(dense, profile, bits),
            tuple(r for ops in int8_reads for r in ops.reads),
            stored_weight_bytes(config, int8_widths),
        ),
        "vanilla_gpt": (
            _energy(vanilla_gpt_operations(totals.row_tokens, config), profile),
            vanilla_gpt_reads(totals.tokens, config, float_bits),
            vanilla_gpt_weight_bytes(config, float_bits),
        ),
    }
    baselines = []
    for name, (joules, reads, stored) in priced.items():
        memory = profile.memory_for(stored)
        movement = _movement(reads, profile, memory)
        baselines.append(
            Baseline(
                name,
                BASELINES[name],
                joules,
                ratio=_ratio(joules, report.energy_j),
                weight_bytes=sum(r.bytes for r in reads),
                weight_memory=memory,
                data_movement_j=movement,
                total_ratio=_ratio(joules + movement, report.total_j),
            )
        )
    return tuple(baselines)


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
        "input_zero_fraction": totals.input_zero_fraction(config),
        "profile": profile.name,
        "tokens": totals.tokens,
        "generated_tokens": generated_tokens,
        "cached_prompt_tokens": cached_prompt_tokens,
        "rules": {rule: report.to_dict() for rule, report in reports.items()},
        "note": NOTE,
    }
