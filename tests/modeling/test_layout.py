"""The spike layout against counts worked out by hand for both placements, with and without ``ffn_pre``, and
against the model it describes: its modules, its weights' shapes and the names in its statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from spikegpt import SpikeGPTForCausalLM
from spikegpt.modeling.layout import spike_layout

SHAPE = dict(n_embd=4, ffn_hidden=8, vocab_size=5, n_layer=2)  # d = 4, F = 8, V = 5
TIME = [("key", 4, 4), ("value", 4, 4), ("receptance", 4, 4), ("output", 4, 4)]
CHANNEL = [("key", 4, 8), ("receptance", 4, 4), ("value", 8, 4)]


def products_by_hand(ffn_pre: bool) -> list[tuple[str, int, int]]:
    """(name, fan-in, fan-out) of every block product in forward order."""
    mixes = [("blocks.0.ffn_pre", CHANNEL) if ffn_pre else ("blocks.0.att", TIME), ("blocks.0.ffn", CHANNEL)]
    mixes += [("blocks.1.att", TIME), ("blocks.1.ffn", CHANNEL)]
    return [(f"{mix}.{role}", fan_in, fan_out) for mix, products in mixes for role, fan_in, fan_out in products]


@pytest.mark.parametrize("ffn_pre", [False, True], ids=["att", "ffn_pre"])
def test_residual_placement_by_hand(ffn_pre):
    layout = spike_layout(tiny_config(**SHAPE, ffn_pre=ffn_pre))
    first = "ffn_pre" if ffn_pre else "att"
    assert layout.sites == (
        "embedding",
        f"blocks.0.{first}.lif",
        "blocks.0.ffn.lif",
        "blocks.1.att.lif",
        "blocks.1.ffn.lif",
    )
    assert layout.lif_on_residual and not layout.spiking_inputs and layout.site_width == 4 and layout.n_layer == 2
    assert [(p.name, p.fan_in, p.fan_out) for p in layout.products] == products_by_hand(ffn_pre)
    assert not any(p.reads_spikes for p in layout.products)  # LayerNorm outputs, gated WKV, relu(k)²
    # only the channel mixes' value products read relu(k)², mostly zero: 2 per model, 3 with ffn_pre
    assert [p.name for p in layout.products if p.event_driven] == [
        *(["blocks.0.ffn_pre.value"] if ffn_pre else []),
        "blocks.0.ffn.value",
        "blocks.1.ffn.value",
    ]
    kinds = [(mix.name, mix.kind) for mix in layout.mixes]
    assert kinds[:2] == [(f"blocks.0.{first}", "channel" if ffn_pre else "time"), ("blocks.0.ffn", "channel")]


@pytest.mark.parametrize("ffn_pre", [False, True], ids=["att", "ffn_pre"])
def test_inputs_placement_by_hand(ffn_pre):
    layout = spike_layout(tiny_config(**SHAPE, ffn_pre=ffn_pre, spike_placement="inputs"))
    assert layout.sites == ("embedding",)  # no LIF on the residual stream: the spikes are the products' inputs
    assert layout.spiking_inputs and not layout.lif_on_residual
    assert [(p.name, p.fan_in, p.fan_out) for p in layout.products] == products_by_hand(ffn_pre)
    assert all(p.reads_spikes and p.event_driven for p in layout.products)
    assert len(layout.products) == (13 if ffn_pre else 14)


def test_the_head_is_never_event_driven_and_spikes_off_read_real_values():
    for placement in ("residual", "inputs"):
        head = spike_layout(tiny_config(**SHAPE, spike_placement=placement)).head
        assert (head.name, head.fan_in, head.fan_out, head.reads_spikes, head.event_driven) == (
            "head",
            4,
            5,
            False,
            False,
        )
    off = spike_layout(tiny_config(**SHAPE, spike_placement="inputs"), spiking=False)
    assert not off.spiking_inputs and not any(p.reads_spikes for p in off.products)
    assert [p.name for p in off.products if p.event_driven] == ["blocks.0.ffn.value", "blocks.1.ffn.value"]


@pytest.mark.parametrize("placement", ["residual", "inputs"])
@pytest.mark.parametrize("ffn_pre", [False, True], ids=["att", "ffn_pre"])
def test_the_layout_describes_the_model(placement, ffn_pre):
    model = SpikeGPTForCausalLM(tiny_config(ffn_pre=ffn_pre, spike_placement=placement)).eval()
    layout = model.layout
    linears = {name: m for name, m in model.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert list(linears) == list(layout.product_names)  # every block product, in module (= forward) order
    for product in (*layout.products, layout.head):
        assert model.product(product.name).weight.shape == (product.fan_out, product.fan_in), product.name
    with torch.no_grad():
        stats = model(torch.tensor([[1, 2, 3]]), output_spike_stats=True).spike_stats
    assert stats.sites == layout.sites and stats.projections == layout.product_names
    assert stats.counts.shape[1] == len(layout.sites) and stats.reads.shape[1] == len(layout.products)
