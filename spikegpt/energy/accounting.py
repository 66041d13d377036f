"""Operation counts of a SpikeGPT forward pass, from its measured spikes, under a named accounting rule.

Notation: T tokens processed (all rows together), d = n_embd, F = ffn_hidden, V = vocab_size, S_x the spikes
measured at site x. An operation is one of four kinds (priced by ``spikegpt.energy.profiles``): ``mac`` (real ×
real, multiply-accumulate), ``ac`` (an accumulate triggered by a binary 1: counted as nonzero inputs × fan-out,
from the measured spikes), ``neuron`` (one LIF update) and ``elementwise`` (one arithmetic step outside a matrix
product; a fused multiply-add, an exp, a max or a division each count as one).

What the forward computes (``spikegpt.modeling.model``), per layer and rule ``strict``:

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

So under ``strict`` the only accumulate-only work of a ``residual`` model is adding spikes into the residual
stream and into ln0's sums: every matrix product in that placement reads real values.

Every product is priced from what it read (``SpikeStats.reads``: per projection its nonzero input elements N and,
for whole-number inputs, their summed magnitude S), never from an assumed rate:

    strict      whole-number input (spikes, spike counts): S·d_out AC, one accumulate per unit of count and output;
                real input: T·d_in·d_out MAC, one per element whether it is zero or not
    event       event-driven hardware with graded spikes (Loihi 2 style): a zero input costs nothing; whole-number
                input S·d_out AC as strict; real input N·d_out MAC. So the zeros of relu(k)² entering the
                channel mix's V count in both placements, and event ≤ strict term by term, the two differing
                exactly in the zero real inputs: (T·d_in − N)·d_out MAC per real-input product.

With ``spike_placement="inputs"`` every projection of a block reads spikes; the per-layer work changes thus:

    encoders    binary: one LIF update per encoded element (time mix: K, V, R inputs 3·T·d and O's T·d; channel
                mix: K, R inputs 2·T·d and V's T·F) as ``neuron``; counts: per encoded element 4 elementwise steps
                (magnitude, its sum for the threshold, division, rounding with the clip), then one multiply per
                output element to scale each product by its threshold (T·d_out elementwise)
    products    K, V, R, O and K, R, V as above from their reads (AC under strict and event)
    residual    x + branch: T·d elementwise per mix (real values, no LIF on the residual stream)

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

Rule ``paper`` on an ``inputs`` model: the input spikes the table scales by are each projection's own, so its
projections count as in strict (S·d_out AC) and only WKV differs (6·T·d MAC).

Baselines: ``spiking_off`` is the same architecture with every spike function the identity (counted as strict on
a non-spiking model: no thresholds, no neurons, residual additions of real values as elementwise steps, every
product a MAC); ``vanilla_gpt`` is the paper's formula for a GPT of the same width and depth over the same
tokens, per layer and per window of T tokens: E_MAC · (3·T·d² + 2·T²·d + T² + 2·T² + FL_MLP) with
FL_MLP = 2·T·d·F (Table 1's rows only: no output projection, LayerNorm, embedding or head). A GPT reads a text
longer than its context length (the model's ``ctx_len``) in windows of that length, one after the other, not as
one attention sequence: a sequence is cut into consecutive windows of ``ctx_len`` tokens and a shorter last one.

``equal_bit_int8`` is a dense model of equal bit width: the spiking_off count with every block projection a dense
int8 MAC (0.23 pJ, Horowitz 2014, 45 nm), the rest priced by the report's profile. Yan et al. (arXiv 2409.08290)
find an SNN beats such an equal-bit quantized network only below about 6% spike rate once data movement is
counted, which the weight reads below do.

Data movement: the weights each matrix reads, counted from the same receipts (``WeightRead``). A matrix of fan-in
d_in and fan-out d_out is stored as d_in rows, one per input element, each the d_out weights that element
multiplies, packed at the matrix's width b: ⌈d_out·b / 8⌉ bytes a row. Per layer:

    block products  dense hardware (rules strict and paper) reads every row for every token: T·d_in rows;
                    event-driven hardware (rule event) reads the rows of nonzero inputs only: N rows, N the
                    product's nonzero input elements from its receipt (a spike count c reads its row once)
    head            H·d rows of V weights under every rule (its input, a LayerNorm output, is never zero)
    embedding       one row of d weights per token (a table lookup), under every rule

Widths (``WeightWidths``): the block products and the head at the model's ``weight_bits`` (8, 4 or 1 where it is
quantized); float weights, and the embedding (never quantized), at the profile's ``float_weight_bits``, the width
of the hardware's number format. Each token reads its weights anew (matrix–vector products, batch 1: no reuse of
a read across the tokens of a batch or a prefill chunk); per-channel vectors (LayerNorm affines, decays, token-shift
ratios, quantization scales: O(d) per layer and token), activations and the recurrent state are not counted. The
baselines read as dense hardware: spiking_off every row at the model's widths; equal_bit_int8 the block products
at 8 bits, the head at the model's width; vanilla_gpt the matrices of its formula (per layer and token 3 of d × d
and the FFN's d × F and F × d) at the float width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EnergyError
from ..modeling.config import SpikeGPTConfig
from ..modeling.layout import Mix, Product, spike_layout
from ..modeling.stats import SpikeStats

KINDS = ("mac", "ac", "neuron", "elementwise")

RULES = {
    "strict": "AC only where an operand is binary in this architecture (spikes added into the residual stream "
    "and into ln0's sums); every matrix product reads LayerNorm outputs, so it is a MAC",
    "paper": "SpikeGPT, TMLR 2024, Table 1: K/V/R projections and the channel mix as AC x measured firing rate of "
    "the preceding spike layer, WKV as 6*T*d MAC; operations the table omits counted as in strict",
    "event": "event-driven hardware with graded spikes (Loihi 2 style): a zero input to a product costs nothing, "
    "each nonzero whole-number input count x fan-out ACs, each nonzero real input fan-out MACs; the rest as strict",
}
READS = {
    "dense": "dense hardware reads every weight row of every product for every token",
    "event": "event-driven hardware reads the weight rows of a product's nonzero inputs only",
}
RULE_READS = {"strict": "dense", "paper": "dense", "event": "event"}  # how each rule's hardware reads its weights
PROJECTIONS = ("key", "value", "receptance", "output")  # the names of the block products' terms

LAYERNORM_OPS = 5  # per element: sum, sum of squares, subtract the mean, scale by 1/std, affine
LAYERNORM_STAT_OPS = 2  # of those, the two sums, which are accumulates of spikes when the input is binary
MIX_OPS = 2  # x·μ + x₋₁·(1 − μ): a multiply and a fused multiply-add, (1 − μ) being a constant
SIGMOID_OPS = 3  # exp, add, division
WKV_OPS = 19  # stable recurrence per token and channel, counted in the module docstring
COUNT_ENCODE_OPS = 4  # spike counts per element: magnitude, its sum (threshold), division, rounding with the clip
PAPER_WKV_MACS = 6  # SpikeGPT, TMLR 2024, Table 1: attention f(Q, K, V) costs E_MAC · 6Td


@dataclass(frozen=True)
class Term:
    """``count`` operations of one ``kind`` doing one job (``name``) inside a layer."""

    name: str
    kind: str
    count: int


@dataclass(frozen=True)
class WeightRead:
    """The weights one matrix of a layer read: ``rows`` rows (one per input element read) of ``row_bytes`` bytes
    each; ``kind``: the operations they feed ("mac", "ac"), or "lookup" for the embedding table."""

    name: str
    kind: str
    rows: int
    row_bytes: int

    @property
    def bytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class WeightWidths:
    """Bits per stored weight of the block products, the head and the embedding table."""

    products: int
    head: int
    embedding: int

    @classmethod
    def of(cls, config: SpikeGPTConfig, float_bits: int) -> WeightWidths:
        """A model's widths: its ``weight_bits`` where quantized (products and head), ``float_bits`` elsewhere;
        the embedding is never quantized (``spikegpt.quant.grids``)."""
        bits = config.weight_bits or float_bits
        return cls(bits, bits, float_bits)

    def to_dict(self) -> dict:
        return {"products": self.products, "head": self.head, "embedding": self.embedding}


def row_bytes(fan_out: int, bits: int) -> int:
    """Bytes of one stored row: ``fan_out`` weights of ``bits`` bits, packed, in whole bytes."""
    return -(-fan_out * bits // 8)


@dataclass(frozen=True)
class LayerOps:
    """The operations of one row of the report: the embedding, a block's time or channel mix, or the head.

    site: the spiking site whose spikes this layer emits (None for the head); spikes, elements: what was measured
    there (its firing rate is spikes / elements); input_site: whose spikes the paper rule scales this layer's
    projections by; reads: the weights its matrices read.
    """

    name: str
    terms: tuple[Term, ...]
    site: str | None = None
    spikes: int | None = None
    elements: int = 0
    input_site: str | None = None
    reads: tuple[WeightRead, ...] = ()

    @property
    def firing_rate(self) -> float | None:
        return self.spikes / self.elements if self.spikes is not None and self.elements else None

    @property
    def weight_bytes(self) -> int:
        return sum(r.bytes for r in self.reads)

    def count(self, kind: str) -> int:
        return sum(t.count for t in self.terms if t.kind == kind)


@dataclass(frozen=True)
class SpikeTotals:
    """Spike statistics on the host, as the accounting needs them: spikes per site over all rows, tokens per row,
    and per projection (nonzero input elements, summed magnitude of whole-number inputs) over all rows."""

    sites: tuple[str, ...]
    spikes: tuple[int, ...]
    row_tokens: tuple[int, ...]
    n_embd: int
    projections: tuple[str, ...] = ()
    reads: tuple[tuple[int, int], ...] = ()
    head_tokens: int | None = None

    @classmethod
    def from_stats(cls, stats: SpikeStats) -> SpikeTotals:
        """Reads ``stats`` with exactly one device-to-host transfer; every count is an int64 on the device, so
        the totals are exact."""
        batch, n_sites = stats.counts.shape
        parts = [stats.counts.sum(dim=0), stats.tokens]
        if stats.reads is not None:
            parts.append(stats.reads.sum(dim=0).reshape(-1))
        if stats.head_tokens is not None:
            parts.append(stats.head_tokens.sum().reshape(1))
        flat = torch.cat([p.detach().reshape(-1).to(torch.int64) for p in parts]).tolist()
        spikes, row_tokens, rest = flat[:n_sites], flat[n_sites : n_sites + batch], flat[n_sites + batch :]
        reads = ()
        if stats.reads is not None:
            n = 2 * len(stats.projections)
            reads, rest = tuple(zip(rest[0:n:2], rest[1:n:2], strict=True)), rest[n:]
        head_tokens = rest[0] if stats.head_tokens is not None else None
        projections = tuple(stats.projections) if stats.reads is not None else ()
        return cls(tuple(stats.sites), tuple(spikes), tuple(row_tokens), stats.n_embd, projections, reads, head_tokens)

    @property
    def tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def firing_rate(self) -> float:
        """Fraction of all values at all sites that were spikes (as ``SpikeStats.firing_rate``)."""
        elements = self.tokens * self.n_embd * len(self.sites)
        return sum(self.spikes) / elements if elements else 0.0

    def input_zero_fraction(self, config: SpikeGPTConfig) -> float | None:
        """Of all the input elements the block products read (each product's fan-in, every token), the fraction
        that were zero (what event-driven hardware skips); None for statistics without the products' reads."""
        if not self.reads:
            return None
        fan_ins = {product.name: product.fan_in for product in spike_layout(config).products}
        elements = self.tokens * sum(fan_ins[name] for name in self.projections)
        nonzero = sum(count for count, _ in self.reads)
        return 1 - nonzero / elements if elements else 0.0

    def check(self, config: SpikeGPTConfig) -> None:
        layout = spike_layout(config)
        expected = layout.sites
        if self.sites != expected or self.n_embd != config.n_embd:
            raise EnergyError(
                f"the spike statistics ({len(self.sites)} sites, width {self.n_embd}) do not come from this model "
                f"({len(expected)} sites, width {config.n_embd}): pass the config of the model that produced them"
            )
        if self.projections and self.projections != layout.product_names:
            raise EnergyError("the projection reads do not come from this model: pass its config")


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise EnergyError(f"unknown accounting rule {rule!r}; choose one of {', '.join(RULES)}")


def stored_weight_bytes(config: SpikeGPTConfig, widths: WeightWidths) -> int:
    """Bytes of every weight matrix of the model at ``widths``: the embedding table, the block products, the head
    (what the placement rule of a profile compares with its on-chip memory)."""
    d, vocab = config.n_embd, config.vocab_size
    products = sum(p.fan_in * row_bytes(p.fan_out, widths.products) for p in spike_layout(config).products)
    return vocab * row_bytes(d, widths.embedding) + products + d * row_bytes(vocab, widths.head)


def count_operations(
    totals: SpikeTotals,
    config: SpikeGPTConfig,
    rule: str,
    head_tokens: int | None = None,
    spiking: bool | None = None,
    widths: WeightWidths | None = None,
) -> list[LayerOps]:
    """Per-layer operation counts and weight reads under ``rule``; ``head_tokens``: positions with logits (default:
    every token); ``spiking=False`` counts the same tokens on the model with its spike functions off (the
    baseline); ``widths``: of the weights read (default: the model's, float weights at 32 bits)."""
    check_rule(rule)
    layout = spike_layout(config, spiking)
    driven = layout.spiking_inputs  # the products read whole numbers
    widths = WeightWidths.of(config, 32) if widths is None else widths
    tokens, d = totals.tokens, config.n_embd
    spikes = dict(zip(totals.sites, totals.spikes, strict=True))
    reads = dict(zip(totals.projections, totals.reads, strict=True))
    elements = tokens * d
    paper = rule == "paper"
    event_reads = RULE_READS[rule] == "event" and layout.spiking  # the baseline (spiking off) is dense hardware

    def read(name: str) -> tuple[int, int]:
        if name not in reads:
            raise EnergyError(
                f"rule {rule!r} prices {name} from what it read, but these statistics carry no projection reads "
                "(make them with output_spike_stats=True on this version)"
            )
        return reads[name]

    def projection(product: Product, input_site: str | None) -> Term:
        d_in, d_out = product.fan_in, product.fan_out
        if product.reads_spikes:  # spikes or spike counts: one AC per unit of count and output, under every rule
            return Term(product.role, "ac", read(product.name)[1] * d_out)
        if paper and input_site is not None:  # R̂ · T·d_in·d_out with R̂ = S / (T·d); d_in or d_out is d: exact
            return Term(product.role, "ac", spikes[input_site] * (d_in * d_out // d))
        if rule == "event":  # the zeros of a real input (relu(k)², for one) cost nothing
            return Term(product.role, "mac", read(product.name)[0] * d_out)
        return Term(product.role, "mac", tokens * d_in * d_out)

    def weight_reads(mix: Mix, terms: tuple[Term, ...]) -> tuple[WeightRead, ...]:
        """The rows each product of ``mix`` read: every row for every token, or (event) those of nonzero inputs."""
        kinds = {t.name: t.kind for t in terms}
        return tuple(
            WeightRead(
                product.role,
                kinds[product.role],
                read(product.name)[0] if event_reads else tokens * product.fan_in,
                row_bytes(product.fan_out, widths.products),
            )
            for product in mix.products
        )

    def encode(mix: Mix) -> tuple[Term, ...]:
        """The encoders of a mix's product inputs and the threshold scaling of its products' outputs."""
        if not driven:
            return ()
        widths_in = sum(product.fan_in for product in mix.products)
        if config.input_spikes == "binary":
            return (Term("input_lif", "neuron", tokens * widths_in),)
        return (
            Term("input_counts", "elementwise", COUNT_ENCODE_OPS * tokens * widths_in),
            Term("count_scale", "elementwise", tokens * sum(product.fan_out for product in mix.products)),
        )

    def spike_out(site: str | None) -> tuple[Term, ...]:
        if site is None:
            return (Term("residual", "elementwise", elements),)
        return (Term("lif", "neuron", elements), Term("residual", "ac", spikes[site]))

    def time_mix(mix: Mix, input_site: str | None) -> tuple[Term, ...]:
        key, value, receptance, output = mix.products
        wkv = Term("wkv", "mac", PAPER_WKV_MACS * elements) if paper else Term("wkv", "elementwise", WKV_OPS * elements)
        return (
            Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
            Term("token_shift", "elementwise", 3 * MIX_OPS * elements),
            *encode(mix),
            projection(key, input_site),
            projection(value, input_site),
            projection(receptance, input_site),
            Term("sigmoid", "elementwise", SIGMOID_OPS * elements),
            wkv,
            Term("gate", "elementwise", elements),
            projection(output, None),
        )

    def channel_mix(mix: Mix, input_site: str | None) -> tuple[Term, ...]:
        key, receptance, value = mix.products
        return (
            Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
            Term("token_shift", "elementwise", 2 * MIX_OPS * elements),
            *encode(mix),
            projection(key, input_site),
            Term("relu_square", "elementwise", 2 * tokens * key.fan_out),
            projection(value, input_site),
            projection(receptance, input_site),
            Term("sigmoid", "elementwise", SIGMOID_OPS * elements),
            Term("gate", "elementwise", elements),
        )

    embedding_site = totals.sites[0]
    if layout.spiking and config.binary_embedding:
        embedding_terms = (
            Term("threshold", "elementwise", elements),
            Term("ln0_sums", "ac", LAYERNORM_STAT_OPS * spikes[embedding_site]),
            Term("ln0_normalise", "elementwise", (LAYERNORM_OPS - LAYERNORM_STAT_OPS) * elements),
        )
    else:
        embedding_terms = (Term("ln0", "elementwise", LAYERNORM_OPS * elements),)
    lookup = (WeightRead("lookup", "lookup", tokens, row_bytes(d, widths.embedding)),)
    layers = [LayerOps("embedding", embedding_terms, embedding_site, spikes[embedding_site], elements, reads=lookup)]
    previous = embedding_site  # the spikes that last entered the residual stream (placement "residual")
    for mix in layout.mixes:
        mixer = time_mix if mix.kind == "time" else channel_mix
        site = mix.site  # a LIF on the residual stream
        terms = mixer(mix, previous if paper and not driven else None) + spike_out(site if layout.spiking else None)
        matrices = weight_reads(mix, terms)
        if site is not None:
            before = previous if paper else None
            layers.append(LayerOps(mix.name, terms, site, spikes[site], elements, before, matrices))
            previous = site
        elif driven:  # the row's rate: spikes per element read by its products
            read_spikes = sum(read(product.name)[1] for product in mix.products)
            read_elements = tokens * sum(product.fan_in for product in mix.products)
            layers.append(LayerOps(mix.name, terms, None, read_spikes, read_elements, reads=matrices))
        else:
            layers.append(LayerOps(mix.name, terms, None, None, elements, reads=matrices))
    head_tokens = tokens if head_tokens is None else head_tokens
    head_terms = (
        Term("layernorm", "elementwise", LAYERNORM_OPS * elements),
        Term("head", "mac", head_tokens * d * config.vocab_size),
    )
    head_reads = (WeightRead("head", "mac", head_tokens * d, row_bytes(config.vocab_size, widths.head)),)
    layers.append(LayerOps("head", head_terms, reads=head_reads))
    return layers


def context_windows(tokens: int, context: int) -> list[int]:
    """The lengths of the consecutive windows in which a model with a ``context``-token limit reads ``tokens``."""
    full, rest = divmod(tokens, context)
    return [context] * full + ([rest] if rest else [])


def vanilla_gpt_reads(tokens: int, config: SpikeGPTConfig, bits: int) -> tuple[WeightRead, ...]:
    """The weights the vanilla-GPT formula's matrices read over ``tokens`` tokens, dense, at ``bits`` bits: per
    layer and token the Q, K, V matrices (3·d rows of d) and the FFN's d × F and F × d (d rows of F, F rows of d)."""
    d, hidden, layers = config.n_embd, config.ffn_hidden, config.n_layer
    return (
        WeightRead("qkv", "mac", layers * tokens * 3 * d, row_bytes(d, bits)),
        WeightRead("ffn", "mac", layers * tokens * d, row_bytes(hidden, bits)),
        WeightRead("ffn", "mac", layers * tokens * hidden, row_bytes(d, bits)),
    )


def vanilla_gpt_weight_bytes(config: SpikeGPTConfig, bits: int) -> int:
    """Bytes of the vanilla-GPT formula's matrices (its reads of one token)."""
    return sum(r.bytes for r in vanilla_gpt_reads(1, config, bits))


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
