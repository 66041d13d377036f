"""Operation counts of a SpikeGPT forward pass, from its measured spikes, under a named accounting rule.

Notation: T tokens processed (all rows together), d = n_embd, F = ffn_hidden, V = vocab_size, S_x the spikes
measured at site x. An operation is one of four kinds (priced by ``spikegpt.energy.profiles``): ``mac`` (real ×
real, multiply-accumulate), ``ac`` (an accumulate triggered by a binary 1: counted as nonzero inputs × fan-out,
from the measured spikes), ``neuron`` (one LIF update) and ``elementwise`` (one arithmetic step outside a matrix
product; a fused multiply-add, an exp, a max or a division each count as one).

What the forward computes (``spikegpt.model``), per layer and rule ``strict``:

    embedding   lookup: a table read, no arithmetic (memory traffic: excluded)
                threshold x >= 0: T·d elementwise (when the embedding spikes)
                ln0 of binary input: its two sums (Σx, Σx²) are accumulates of spikes, 2·S_embedding AC; the
                normalisation (subtract mean, scale, affine) 3·T·d elementwise. (Both depend only on the token
                id, so a deployment could tabulate them.)
    time mix    ln1 5·T·d elementwise (per element: sum, sum of squares, subtract, scale, affine; the per-token
                mean and reciprocal square root are not counted)
                token shift x·μ + x₋₁·(1−μ) for k, v, r: 3 × 2·T·d elementwise
                K, V, R projections 3·T·d² MAC: their input is a LayerNorm output, a real number
                sigmoid(r) 3·T·d elementwise (exp, add, division)
                WKV, the stable recurrence (kernels/wkv_torch.py): 19·T·d elementwise (per token and channel,
                output: add, max, 2 subtract, 2 exp, multiply, 2 fused multiply-add, division; state update: add,
                max, 2 subtract, 2 exp, multiply, 2 fused multiply-add)
                gate r ⊙ wkv T·d elementwise; O projection T·d² MAC
    channel mix ln2 5·T·d; token shift for k, r 2 × 2·T·d; K T·d·F MAC; ReLU and square 2·T·F elementwise;
                V T·F·d MAC; R T·d² MAC; sigmoid 3·T·d; gate T·d elementwise
    each LIF    T·d neuron updates; the spikes enter the residual stream x + s: one AC per spike (S_site)
    head        ln_out 5·T·d elementwise; head H·d·V MAC for the H positions whose logits are computed

So under ``strict`` the only accumulate-only work is adding spikes into the residual stream and into ln0's
sums: every matrix product in this architecture reads real values. The ReLU² activations entering the channel
mix's V are often zero, and sparse hardware could skip them, but they are not spikes and are not measured here:
strict counts them as dense MACs.

Rule ``paper`` follows the SpikeGPT paper (SpikeGPT, TMLR 2024, Table 1) where the table has a row, and counts
everything else as ``strict`` does, so the two rules differ exactly in these terms:

    K, V, R projections   E_AC · R̂ · 3·T·d²      (strict: 3·T·d² MAC)
    WKV ("attention")     E_MAC · 6·T·d          (strict: 19·T·d elementwise)
    channel mix K, V, R   E_AC · R̂ · FL_MLP, FL_MLP = T·(2·d·F + d²)   (strict: MAC)

R̂ is measured, not assumed: the firing rate of the spikes that entered the residual stream just before the
layer, i.e. the previous spiking site in forward order (the embedding for block 0's time mix, block i's time-mix
LIF for its channel mix, block i−1's channel-mix LIF for block i's time mix), the spike train the paper treats as
those projections' input. R̂ · (ops of a d_in → d_out product) = S_input · d_in · d_out / d ACs. Table 1 has no
row for the output projection, LayerNorms, neurons, token shift, gates or head; they keep their strict counts.

Baselines: ``spiking_off`` is the same architecture with every spike function the identity (counted as strict on
a non-spiking model: no thresholds, no neurons, residual additions of real values as elementwise steps, every
product a MAC); ``vanilla_gpt`` is the paper's formula for a GPT of the same width and depth over the same
tokens, per layer and per window of T tokens: E_MAC · (3·T·d² + 2·T²·d + T² + 2·T² + FL_MLP) with
FL_MLP = 2·T·d·F (Table 1's rows only: no output projection, LayerNorm, embedding or head). A GPT reads a text
longer than its context length (the model's ``ctx_len``) in windows of that length, one after the other, not as
one attention sequence: a sequence is cut into consecutive windows of ``ctx_len`` tokens and a shorter last one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SpikeGPTConfig
from ..errors import EnergyError
from ..stats import SpikeStats, site_names

KINDS = ("mac", "ac", "neuron", "elementwise")

RULES = {
    "strict": "AC only where an operand is binary in this architecture (spikes added into the residual stream "
    "and into ln0's sums); every matrix product reads LayerNorm outputs, so it is a MAC",
    "paper": "SpikeGPT, TMLR 2024, Table 1: K/V/R projections and the channel mix as AC x measured firing rate of "
    "the preceding spike layer, WKV as 6*T*d MAC; operations the table omits counted as in strict",
}

LAYERNORM_OPS = 5  # per element: sum, sum of squares, subtract the mean, scale by 1/std, affine
LAYERNORM_STAT_OPS = 2  # of those, the two sums, which are accumulates of spikes when the input is binary
MIX_OPS = 2  # x·μ + x₋₁·(1 − μ): a multiply and a fused multiply-add, (1 − μ) being a constant
SIGMOID_OPS = 3  # exp, add, division
WKV_OPS = 19  # stable recurrence per token and channel, counted in the module docstring
PAPER_WKV_MACS = 6  # SpikeGPT, TMLR 2024, Table 1: attention f(Q, K, V) costs E_MAC · 6Td


@dataclass(frozen=True)
class Term:
    """``count`` operations of one ``kind`` doing one job (``name``) inside a layer."""

    name: str
    kind: str
    count: int


@dataclass(frozen=True)
class LayerOps:
    """The operations of one row of the report: the embedding, a block's time or channel mix, or the head.

    site: the spiking site whose spikes this layer emits (None for the head); spikes, elements: what was measured
    there (its firing rate is spikes / elements); input_site: whose spikes the paper rule scales this layer's
    projections by.
    """

    name: str
    terms: tuple[Term, ...]
    site: str | None = None
    spikes: int | None = None
    elements: int = 0
    input_site: str | None = None

    @property
    def firing_rate(self) -> float | None:
        return self.spikes / self.elements if self.spikes is not None and self.elements else None

    def count(self, kind: str) -> int:
        return sum(t.count for t in self.terms if t.kind == kind)


@dataclass(frozen=True)
class SpikeTotals:
    """Spike statistics on the host, as the accounting needs them: spikes per site over all rows, tokens per row."""

    sites: tuple[str, ...]
    spikes: tuple[int, ...]
    row_tokens: tuple[int, ...]
    n_embd: int

    @classmethod
    def from_stats(cls, stats: SpikeStats) -> SpikeTotals:
        """Reads ``stats`` with exactly one device-to-host transfer."""
        batch, n_sites = stats.counts.shape
        # counts hold whole numbers in fp32, so the integer cast is exact; one tensor, one transfer
        flat = torch.cat([stats.counts.detach().long().reshape(-1), stats.tokens.detach().long()]).tolist()
        per_row = [flat[r * n_sites : (r + 1) * n_sites] for r in range(batch)]
        spikes = tuple(sum(row[s] for row in per_row) for s in range(n_sites))
        return cls(tuple(stats.sites), spikes, tuple(flat[batch * n_sites :]), stats.n_embd)

    @property
    def tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def firing_rate(self) -> float:
        """Fraction of all values at all sites that were spikes (as ``SpikeStats.firing_rate``)."""
        elements = self.tokens * self.n_embd * len(self.sites)
        return sum(self.spikes) / elements if elements else 0.0

    def check(self, config: SpikeGPTConfig) -> None:
        expected = site_names(config.n_layer, config.ffn_pre)
        if self.sites != expected or self.n_embd != config.n_embd:
            raise EnergyError(
                f"the spike statistics ({len(self.sites)} sites, width {self.n_embd}) do not come from this model "
                f"({len(expected)} sites, width {config.n_embd}): pass the config of the model that produced them"
            )


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise EnergyError(f"unknown accounting rule {rule!r}; choose one of {', '.join(RULES)}")


def count_operations(
    totals: SpikeTotals,
    config: SpikeGPTConfig,
    rule: str,
    head_tokens: int | None = None,
    spiking: bool | None = None,
) -> list[LayerOps]:
    """Per-layer operation counts under ``rule``; ``head_tokens``: positions with logits (default: every token);
    ``spiking=False`` counts the same tokens on the model with its spike functions off (the baseline)."""
    check_rule(rule)
    spiking = config.spiking if spiking is None else spiking
    tokens, d = totals.tokens, config.n_embd
    spikes = dict(zip(totals.sites, totals.spikes, strict=True))
    elements = tokens * d
    paper = rule == "paper"

    def projection(name: str, d_in: int, d_out: int, input_site: str) -> Term:
        if paper:  # R̂ · T·d_in·d_out with R̂ = S / (T·d); one of d_in, d_out is d, so this is exact
            return Term(name, "ac", spikes[input_site] * (d_in * d_out // d))
        return Term(name, "mac", tokens * d_in * d_out)

    def spike_out(site: str) -> tuple[Term, ...]:
        if not spiking:
            return (Term("residual", "elementwise", elements),)
        return (Term("lif", "neuron", elements), Term("residual", "ac", spikes[site]))

    def time_mix(input_site: str) -> tuple[Term, ...]:
        wkv = Term("wkv", "mac", PAPER_WKV_MACS * elements) if paper else Term("wkv", "elementwise", WKV_OPS * elements)
        return (
            Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
            Term("token_shift", "elementwise", 3 * MIX_OPS * elements),
            projection("key", d, d, input_site),
            projection("value", d, d, input_site),
            projection("receptance", d, d, input_site),
            Term("sigmoid", "elementwise", SIGMOID_OPS * elements),
            wkv,
            Term("gate", "elementwise", elements),
            Term("output", "mac", tokens * d * d),
        )

    def channel_mix(input_site: str) -> tuple[Term, ...]:
        hidden = config.ffn_hidden
        return (
            Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
            Term("token_shift", "elementwise", 2 * MIX_OPS * elements),
            projection("key", d, hidden, input_site),
            Term("relu_square", "elementwise", 2 * tokens * hidden),
            projection("value", hidden, d, input_site),
            projection("receptance", d, d, input_site),
            Term("sigmoid", "elementwise", SIGMOID_OPS * elements),
            Term("gate", "elementwise", elements),
        )

    embedding_site = totals.sites[0]
    if spiking and config.binary_embedding:
        embedding_terms = (
            Term("threshold", "elementwise", elements),
            Term("ln0_sums", "ac", LAYERNORM_STAT_OPS * spikes[embedding_site]),
            Term("ln0_normalise", "elementwise", (LAYERNORM_OPS - LAYERNORM_STAT_OPS) * elements),
        )
    else:
        embedding_terms = (Term("ln0", "elementwise", LAYERNORM_OPS * elements),)
    layers = [LayerOps("embedding", embedding_terms, embedding_site, spikes[embedding_site], elements)]
    for previous, site in zip(totals.sites, totals.sites[1:], strict=False):
        mixer = time_mix if site.endswith(".att.lif") else channel_mix
        layers.append(
            LayerOps(
                site.removesuffix(".lif"),
                mixer(previous) + spike_out(site),
                site,
                spikes[site],
                elements,
                previous if paper else None,
            )
        )
    head_tokens = tokens if head_tokens is None else head_tokens
    head_terms = (
        Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
        Term("head", "mac", head_tokens * d * config.vocab_size),
    )
    layers.append(LayerOps("head", head_terms))
    return layers


def context_windows(tokens: int, context: int) -> list[int]:
    """The lengths of the consecutive windows in which a model with a ``context``-token limit reads ``tokens``."""
    full, rest = divmod(tokens, context)
    return [context] * full + ([rest] if rest else [])


def vanilla_gpt_operations(row_tokens: tuple[int, ...], config: SpikeGPTConfig) -> tuple[Term, ...]:
    """The paper's vanilla-GPT formula (SpikeGPT, TMLR 2024, Table 1) for the same depth, width and sequences,
    read in windows of ``config.ctx_len`` tokens: per layer and per window of T tokens, 3Td² (QKV) + 2T²d
    (attention) + T² (scale) + 2T² (softmax) + 2TdF (FFN) MACs."""
    d, hidden, layers = config.n_embd, config.ffn_hidden, config.n_layer
    rows = [window for t in row_tokens if t for window in context_windows(t, config.ctx_len)]
    return (
        Term("qkv", "mac", layers * sum(3 * t * d * d for t in rows)),
        Term("attention", "mac", layers * sum(2 * t * t * d for t in rows)),
        Term("scale", "mac", layers * sum(t * t for t in rows)),
        Term("softmax", "mac", layers * sum(2 * t * t for t in rows)),
        Term("ffn", "mac", layers * sum(2 * t * d * hidden for t in rows)),
    )
