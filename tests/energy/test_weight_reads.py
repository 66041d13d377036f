"""Data movement: the weight bytes each product read, against hand counts, on a model whose nonzero inputs are
forced (dense and event-driven reading, both spike placements, weights in SRAM and in DRAM), at every weight width,
for every baseline, and priced by each profile's memory rule."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from spikegpt import SpikeGPTForCausalLM
from spikegpt.energy import BUILTIN_PROFILES, HardwareProfile, SpikeTotals, energy_report
from spikegpt.energy.render import format_table
from spikegpt.errors import EnergyError
from spikegpt.modeling.layout import spike_layout

D, HIDDEN, VOCAB, LAYERS = 8, 16, 6, 2
S1 = [0, 3, 5]  # channels of ln1's output that are nonzero: the time mix's K, V, R inputs
S_O = [1, 2]  # of the gate r ⊙ wkv: the output projection's input
S2 = [2, 4, 6, 7]  # of ln2's output: the channel mix's K and R inputs
S_F = [0, 5, 9]  # of relu(k)²: the channel mix's V input (hidden width)
IDS = torch.tensor([[0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])
T = IDS.numel()
FP32 = 4  # bytes per float weight (the default profile's datapath)


def forced_model(placement: str) -> SpikeGPTForCausalLM:
    """A model whose products' nonzero inputs are known whatever the tokens.

    Every parameter is zero but these: ln1 and ln2 have zero weight and bias 1 on S1 and S2, so the time mix reads
    exactly 1 on S1 and 0 elsewhere at every token and the channel mix 1 on S2 (token-shift ratios of 1 take the
    current token only). The time mix's V maps S1 onto S_O; with zero K and R weights, r = sigmoid(0) = 0.5 and WKV
    averages equal values, so the gate r ⊙ wkv is nonzero exactly on S_O. The channel mix's K maps S2 onto S_F, so
    relu(k)² is nonzero exactly on S_F. With placement "inputs" each product reads the spike counts of those
    inputs, round(x / θ) with θ = mean|x|: nonzero on the same channels (equal values: x / θ = width / nonzero).
    """
    config = tiny_config(
        n_embd=D, ffn_hidden=HIDDEN, vocab_size=VOCAB, n_layer=LAYERS, spike_placement=placement,
        input_spikes="counts", spike_count_max=4, spike_count_scale=1.0,
    )  # fmt: skip
    model = SpikeGPTForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.emb.weight.copy_(torch.randn(VOCAB, D, generator=torch.Generator().manual_seed(3)))
        for block in model.model.blocks:
            block.ln1.bias[S1] = 1.0
            block.ln2.bias[S2] = 1.0
            for ratio in (block.att.time_mix_k, block.att.time_mix_v, block.att.time_mix_r):
                ratio.fill_(1.0)
            block.ffn.time_mix_k.fill_(1.0)
            block.ffn.time_mix_r.fill_(1.0)
            block.att.value.weight[torch.tensor(S_O)[:, None], torch.tensor(S1)] = 1.0
            block.ffn.key.weight[torch.tensor(S_F)[:, None], torch.tensor(S2)] = 1.0
    return model


def forced_report(placement: str, rule: str, profile: HardwareProfile):
    model = forced_model(placement)
    with torch.inference_mode():
        stats = model(IDS, output_spike_stats=True).spike_stats
    return energy_report(stats, model.config, rule, profile), stats


# per block: (fan-in, fan-out, nonzero inputs per token) of att K, V, R, O and ffn K, R, V, in the model's order
ATT = [(D, D, len(S1))] * 3 + [(D, D, len(S_O))]
FFN = [(D, HIDDEN, len(S2)), (D, D, len(S2)), (HIDDEN, D, len(S_F))]
STORED = FP32 * (VOCAB * D + LAYERS * sum(i * o for i, o, _ in ATT + FFN) + D * VOCAB)  # every matrix, fp32


def memory_profile(sram_bytes: int) -> HardwareProfile:
    """1 pJ per operation; 2 pJ per byte from SRAM, 100 from DRAM, weights on chip when they fit ``sram_bytes``."""
    return HardwareProfile(
        "unit", 1.0, 1.0, 1.0, 1.0, sram_pj_per_byte=2.0, dram_pj_per_byte=100.0, sram_bytes=sram_bytes
    )


@pytest.mark.parametrize("memory", ["sram", "dram"])
@pytest.mark.parametrize("rule", ["strict", "event"])
@pytest.mark.parametrize("placement", ["residual", "inputs"])
def test_bytes_read_equal_the_hand_count(placement, rule, memory):
    """Dense reading (strict) reads every row of every product for every token; event-driven reading the rows of
    the nonzero inputs; the head H·d rows of V weights and the embedding one row per token under both; the model's
    fp32 weights (STORED bytes) are on chip when they fit the profile's SRAM, one byte short they come from DRAM."""
    profile = memory_profile(STORED if memory == "sram" else STORED - 1)
    report, stats = forced_report(placement, rule, profile)
    nonzero = [T * n for _, _, n in ATT + FFN] * LAYERS
    assert stats.reads.sum(dim=0)[:, 0].tolist() == nonzero  # the receipts: the forced inputs were read as built

    def product_bytes(shapes):
        rows = [T * n if rule == "event" else T * fan_in for fan_in, _, n in shapes]
        return sum(r * fan_out * FP32 for r, (_, fan_out, _) in zip(rows, shapes, strict=True))

    per_layer = [T * D * FP32] + [product_bytes(ATT), product_bytes(FFN)] * LAYERS + [T * D * VOCAB * FP32]
    assert [layer.ops.weight_bytes for layer in report.layers] == per_layer
    assert report.weight_bytes == sum(per_layer) and report.stored_weight_bytes == STORED
    assert report.weight_memory == memory
    price = {"sram": 2.0, "dram": 100.0}[memory] * 1e-12
    assert report.data_movement_j == pytest.approx(sum(per_layer) * price, rel=1e-12)
    assert report.total_j == pytest.approx(report.energy_j + report.data_movement_j, rel=1e-12)
    data = report.to_dict(terms=True)
    assert data["weight_memory"] == memory and data["weight_bytes"] == sum(per_layer)
    assert data["reads_rule"] == {"strict": "dense", "event": "event"}[rule]
    first_att = data["layers"][1]["reads"]
    assert [(r["name"], r["rows"], r["row_bytes"]) for r in first_att] == [
        (name, T * n if rule == "event" else T * fan_in, fan_out * FP32)
        for name, (fan_in, fan_out, n) in zip(("key", "value", "receptance", "output"), ATT, strict=True)
    ]


def test_the_baselines_read_as_dense_hardware_each_at_its_own_widths_and_memory():
    """spiking_off: every row at fp32; equal_bit_int8: the block products at 8 bits (head and embedding as the
    model's); vanilla_gpt: 3 d x d and the FFN's two matrices per layer and token at fp32. The SRAM holds exactly
    the int8 baseline's weights, not the fp32 model's: each baseline is placed by its own bytes."""
    products = LAYERS * sum(i * o for i, o, _ in ATT + FFN)  # weights of the block products
    edges = VOCAB * D + D * VOCAB  # embedding and head
    int8_stored = products + FP32 * edges
    report, _ = forced_report("inputs", "event", memory_profile(int8_stored))
    baselines = {b.name: b for b in report.baselines}
    dense_rows = T * LAYERS * sum(i * o for i, o, _ in ATT + FFN)  # every row of every product, in weights
    embedding, head = T * D, T * D * VOCAB
    assert baselines["spiking_off"].weight_bytes == FP32 * (embedding + dense_rows + head)
    assert baselines["equal_bit_int8"].weight_bytes == dense_rows + FP32 * (embedding + head)
    vanilla = T * LAYERS * (3 * D * D + 2 * D * HIDDEN)
    assert baselines["vanilla_gpt"].weight_bytes == FP32 * vanilla
    assert report.weight_memory == "dram" and baselines["spiking_off"].weight_memory == "dram"
    assert baselines["equal_bit_int8"].weight_memory == "sram"
    assert int8_stored < FP32 * LAYERS * (3 * D * D + 2 * D * HIDDEN)  # the formula's fp32 matrices do not fit
    assert baselines["vanilla_gpt"].weight_memory == "dram"
    for b in baselines.values():
        price = {"sram": 2.0, "dram": 100.0}[b.weight_memory] * 1e-12
        assert b.data_movement_j == pytest.approx(b.weight_bytes * price, rel=1e-12)
        assert b.total_ratio == pytest.approx((b.energy_j + b.weight_bytes * price) / report.total_j, rel=1e-12)
        assert b.ratio == pytest.approx(b.energy_j / report.energy_j, rel=1e-12)  # as before: operations alone
        assert {"weight_bytes", "weight_memory", "data_movement_j", "total_j", "total_ratio"} <= set(b.to_dict())


SHAPE = dict(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=1)
FAN = [(4, 4)] * 4 + [(4, 8), (4, 4), (8, 4)]  # (fan-in, fan-out) of att K, V, R, O and ffn K, R, V


@pytest.mark.parametrize(
    ("weight_bits", "profile", "product_row", "head_row", "embedding_row"),
    [
        (None, "45nm-fp32", lambda o: 4 * o, 20, 16),
        (None, "45nm-fp16", lambda o: 2 * o, 10, 8),  # float weights at the datapath's width
        (8, "45nm-fp32", lambda o: o, 5, 16),  # the embedding is never quantized
        (4, "45nm-fp32", lambda o: o // 2, 3, 16),  # 5 weights of 4 bits: 3 whole bytes
        (1, "45nm-fp32", lambda o: 1, 1, 16),  # 4 or 8 weights of 1 bit: one byte a row
    ],
)
def test_rows_are_read_at_the_weight_width_packed_in_whole_bytes(
    weight_bits, profile, product_row, head_row, embedding_row
):
    config = tiny_config(**SHAPE, weight_bits=weight_bits)
    totals = SpikeTotals(spike_layout(config).sites, (3, 2, 1), (3,), 4)  # T = 3, strict needs no receipts
    report = energy_report(totals, config, "strict", profile)
    products = sum(3 * fan_in * product_row(fan_out) for fan_in, fan_out in FAN)
    assert [layer.ops.weight_bytes for layer in report.layers] == [
        3 * embedding_row,
        sum(3 * i * product_row(o) for i, o in FAN[:4]),
        sum(3 * i * product_row(o) for i, o in FAN[4:]),
        3 * 4 * head_row,
    ]
    assert report.weight_bytes == 3 * embedding_row + products + 12 * head_row
    widths = report.to_dict()["weight_widths"]
    float_bits = BUILTIN_PROFILES[profile].float_weight_bits
    assert widths == {"products": weight_bits or float_bits, "head": weight_bits or float_bits, "embedding": float_bits}


def test_reads_inside_an_operations_price_are_counted_not_priced_again():
    """Loihi's synaptic operation includes reading its weight: the AC products' bytes cost nothing more, the MAC
    head's and the embedding's are priced; a compute-in-memory macro's products read nothing out of the array."""
    config = tiny_config(**SHAPE, spike_placement="inputs")
    names = spike_layout(config).product_names
    totals = SpikeTotals(("embedding",), (3,), (3,), 4, names, tuple((5, 7) for _ in names))
    for name, priced in (("loihi", {"lookup", "head"}), ("rram-cim-22nm", {"lookup"})):
        profile = BUILTIN_PROFILES[name]
        report = energy_report(totals, config, "event", profile)
        assert report.weight_memory == "sram"  # a few hundred bytes fit 1 MiB
        per_byte = profile.sram_pj_per_byte * 1e-12
        billed = [r for layer in report.layers for r in layer.ops.reads if r.name in priced]
        assert report.data_movement_j == pytest.approx(sum(r.bytes for r in billed) * per_byte, rel=1e-12)
        assert report.weight_bytes > sum(r.bytes for r in billed)  # the products' bytes are still counted


def test_a_profile_without_memory_prices_counts_bytes_and_says_it_prices_none():
    config = tiny_config(**SHAPE)
    totals = SpikeTotals(spike_layout(config).sites, (3, 2, 1), (3,), 4)
    report = energy_report(totals, config, "strict", HardwareProfile("ops-only", 1.0, 1.0, 1.0, 1.0))
    assert report.weight_bytes > 0 and report.data_movement_j == 0 and report.weight_memory is None
    assert report.total_j == report.energy_j
    assert any("no memory prices" in item for item in report.excludes)
    assert "data movement NOT priced" in format_table(report)


def test_the_table_gives_operations_data_movement_and_totals_for_the_model_and_each_baseline():
    report, _ = forced_report("inputs", "event", memory_profile(0))
    table = format_table(report)
    header = next(line for line in table.splitlines() if line.startswith("layer"))
    assert header.split() == [
        "layer", "rate", "MAC", "AC", "neuron", "elementwise", "operations", "weights", "read", "movement", "total",
        "share",
    ]  # fmt: skip
    assert "read from DRAM at 100 pJ/byte" in table and "exceed the profile's 0 B on-chip SRAM" in table
    assert "per processed token: operations" in table and "data movement" in table
    for baseline in report.baselines:
        row = next(line for line in table.splitlines() if line.startswith(f"  {baseline.name} "))
        assert "DRAM" in row and f"{baseline.total_ratio:#.3g}x" in row and f"{baseline.ratio:#.3g}x" in row


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sram_pj_per_byte": -1.0}, "sram_pj_per_byte must be a finite number of picojoules per byte"),
        ({"dram_pj_per_byte": "160 pJ"}, "dram_pj_per_byte must be a finite number"),
        ({"sram_bytes": True}, "sram_bytes must be a whole number of bytes"),
        ({"sram_bytes": 1.5}, "sram_bytes must be a whole number of bytes"),
        ({"weight_memory": "hbm"}, "weight_memory must be one of auto, sram, dram"),
        ({"reads_included": ["mac", "lif"]}, "reads_included must be a list of mac or ac"),
        ({"float_weight_bits": 0}, "float_weight_bits must be a width in bits"),
        ({"dram_pj_per_byte": 160.0}, "weight_memory 'auto' needs sram_pj_per_byte, sram_bytes"),
        ({"weight_memory": "sram", "dram_pj_per_byte": 160.0}, "weight_memory 'sram' needs sram_pj_per_byte"),
    ],
)
def test_memory_fields_are_validated(tmp_path, fields, message):
    import json

    path = tmp_path / "chip.json"
    path.write_text(json.dumps({"name": "x", "mac_pj": 1, "ac_pj": 1, "neuron_pj": 1, "elementwise_pj": 1, **fields}))
    from spikegpt.energy import load_profile

    with pytest.raises(EnergyError) as info:
        load_profile(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_weight_memory_can_be_forced_where_the_profile_prices_it():
    fp32 = BUILTIN_PROFILES["45nm-fp32"]
    assert fp32.memory_for(2**20) == "sram" and fp32.memory_for(2**20 + 1) == "dram"  # the stated 1 MiB rule
    assert fp32.with_weight_memory("sram").memory_for(10**12) == "sram"
    assert fp32.with_weight_memory("dram").memory_for(1) == "dram"
    with pytest.raises(EnergyError, match="profile ops-only: weight_memory 'dram' needs dram_pj_per_byte"):
        HardwareProfile("ops-only", 1.0, 1.0, 1.0, 1.0).with_weight_memory("dram")
