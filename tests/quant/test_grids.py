"""Quantized weights: the grids, per-channel scales, the straight-through gradient, quantized checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from quantize_helpers import tiny_model
from transformers import AutoModelForCausalLM

from spikegpt import SpikeGPTConfig
from spikegpt.cli import main
from spikegpt.errors import ConfigError
from spikegpt.hub.checkpoint import load_model
from spikegpt.quant.grids import (
    WEIGHT_BITS,
    dequantize,
    fake_quantize,
    quantize_model_,
    quantize_weight,
    quantized_linears,
)


def grid(bits: int, rows: int = 6, cols: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes on the ``bits`` grid (each row reaching the largest code, which sets its scale) and
    power-of-two scales that differ per row, so every product code·scale is exact in float32."""
    g = torch.Generator().manual_seed(seed)
    if bits == 1:
        codes = torch.randint(0, 2, (rows, cols), generator=g).to(torch.int8) * 2 - 1
    else:
        qmax = 2 ** (bits - 1) - 1
        codes = torch.randint(-qmax, qmax + 1, (rows, cols), generator=g).to(torch.int8)
        codes[:, 0] = qmax * torch.where(torch.rand(rows, generator=g) < 0.5, -1, 1)
    scale = 2.0 ** -torch.randint(3, 12, (rows, 1), generator=g).float()
    return codes, scale


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_quantize_dequantize_is_exact_at_the_grid(bits):
    codes, scale = grid(bits)
    weights = dequantize(codes, scale)
    again_codes, again_scale = quantize_weight(weights, bits)
    assert torch.equal(again_codes, codes) and torch.equal(again_scale, scale)
    assert torch.equal(dequantize(again_codes, again_scale), weights)


@pytest.mark.parametrize("bits", [8, 4])
def test_any_weights_come_back_on_a_grid_that_is_a_fixed_point(bits):
    weights = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    codes, scale = quantize_weight(weights, bits)
    qmax = 2 ** (bits - 1) - 1
    assert codes.abs().max() == qmax and codes.dtype == torch.int8
    # each weight lands on the nearest grid point of its row: error at most half a step
    assert ((dequantize(codes, scale) - weights).abs() <= scale / 2 + 1e-7).all()
    # re-quantizing the dequantized weights gives the same codes and values (what loading a checkpoint relies on)
    recodes, rescale = quantize_weight(dequantize(codes, scale), bits)
    assert torch.equal(recodes, codes)
    assert torch.equal(dequantize(recodes, rescale), dequantize(codes, scale))


def test_scales_are_per_output_channel():
    weights = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    weights[1] *= 1000.0  # one loud row
    weights[3] = 0.0  # and a silent one
    codes, scale = quantize_weight(weights, 4)
    assert scale.shape == (4, 1)
    assert torch.allclose(scale.squeeze(1), weights.abs().amax(dim=1) / 7)
    alone, _ = quantize_weight(weights[[0, 2]], 4)
    assert torch.equal(codes[[0, 2]], alone)  # the loud row did not coarsen the others
    assert scale[3] == 0 and not codes[3].any() and not dequantize(codes, scale)[3].any()
    binary_codes, binary_scale = quantize_weight(weights, 1)
    assert torch.allclose(binary_scale.squeeze(1), weights.abs().mean(dim=1))
    assert set(binary_codes.unique().tolist()) == {-1, 1}


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_fake_quantization_passes_the_gradient_straight_through(bits):
    weights = torch.randn(8, 24, generator=torch.Generator().manual_seed(3), requires_grad=True)
    upstream = torch.randn(8, 24, generator=torch.Generator().manual_seed(4))
    quantized = fake_quantize(weights, bits)
    assert torch.equal(quantized.detach(), dequantize(*quantize_weight(weights, bits)))
    (quantized * upstream).sum().backward()
    assert torch.equal(weights.grad, upstream)  # the identity: rounding is invisible to the backward pass


def test_a_quantized_checkpoint_saves_and_loads_as_any_model(tmp_path):
    model = quantize_model_(tiny_model(), 4)
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(5))
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["weight_bits"] == 4
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.weight_bits == 4
    for (name, original), (_, again) in zip(quantized_linears(model), quantized_linears(loaded), strict=True):
        assert torch.equal(original.weight, again.weight), name
        codes, _ = quantize_weight(again.weight, 4)
        assert codes.abs().max() <= 7
    assert torch.equal(loaded(ids).logits, expected)


def test_a_quantized_model_is_not_requantized_to_another_width():
    model = quantize_model_(tiny_model(), 4)
    before = model.head.weight.clone()
    quantize_model_(model, 4)  # the same width: a no-op
    assert torch.equal(model.head.weight, before)
    with pytest.raises(ConfigError, match="already quantized to 4 bits"):
        quantize_model_(model, 8)
    with pytest.raises(ConfigError, match="float32"):
        quantize_model_(tiny_model().to(torch.bfloat16), 8)


@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_weights_that_are_not_numbers_are_not_put_on_a_grid(bits):
    model = tiny_model()
    model.model.blocks[1].ffn.key.weight.data[3] = float("nan")
    model.head.weight.data[0, 0] = float("inf")
    before = {name: linear.weight.clone() for name, linear in quantized_linears(model)}
    with pytest.raises(ConfigError, match=r"model\.blocks\.1\.ffn\.key\.weight holds values that are not finite"):
        quantize_model_(model, bits)
    for name, linear in quantized_linears(model):  # nothing changed, nothing recorded
        torch.testing.assert_close(linear.weight, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
    assert model.config.weight_bits is None


@pytest.mark.parametrize("bad", [3, 16, True, 0])
def test_weight_bits_are_validated_in_the_config(bad):
    with pytest.raises(ConfigError, match="weight_bits must be one of 8, 4, 1"):
        SpikeGPTConfig(vocab_size=10, n_layer=1, n_embd=8, weight_bits=bad)


def test_the_quantize_command_writes_a_checkpoint_every_command_loads(tmp_path, capsys):
    out = tmp_path / "q1"
    assert main(["quantize", "--weight-bits", "1", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    model, _ = load_model(out)
    assert model.config.weight_bits == 1 and "1-bit weights" in (out / "README.md").read_text()
    for name, linear in quantized_linears(model):
        codes, scale = quantize_weight(linear.weight, 1)
        assert torch.equal(codes, torch.where(linear.weight >= 0, 1, -1).to(torch.int8)), name
        # each row is ±s: its mean |w| is s up to float32 rounding of the sum
        assert torch.allclose(dequantize(codes, scale), linear.weight, rtol=1e-6, atol=0), name
    fresh, _ = load_model(None, weight_bits=1)  # the same as quantizing at load time
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert main(["quantize", "--weight-bits", "4", str(out)]) == 1  # not into a non-empty directory
    assert "not an empty directory" in capsys.readouterr().err
