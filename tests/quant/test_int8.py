"""The int8 decoding path against the dequantized fp32 product, and the engine's use of it."""

from __future__ import annotations

import pytest
import torch
from conftest import relative_error
from quantize_helpers import tiny_model

from spikegpt.errors import ConfigError
from spikegpt.hub.checkpoint import load_model
from spikegpt.quant.grids import quantize_model_, quantized_linears
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.products import Product, decode_products
from spikegpt.runtime.sampling import SamplingParams

# An int8 product rounds a real-valued input to 8 bits per row (symmetric, max|x| / 127 a step): each element moves
# by up to max|x| / 254, and the errors of a d-long dot product add up to about 0.7% of the largest output (measured:
# up to 1.2% over shapes 32 to 3072 wide); 3% leaves room for unlucky draws, not for a wrong scale or layout (100%).
QUANTIZED_TOLERANCE = 3e-2


def test_int8_products_match_the_dequantized_fp32_product():
    """The ``residual`` placement: every product (the head too) reads real values, rounded to 8 bits per row."""
    model = quantize_model_(tiny_model(seed=1), 8)
    references = {name: linear.weight.double().clone() for name, linear in quantized_linears(model)}
    assert len(decode_products(model, "dense", int8=True).install()) == len(references)
    g = torch.Generator().manual_seed(6)
    for name, linear in quantized_linears(model):
        x = torch.randn(3, 1, linear.in_features, generator=g)  # fresh inputs: a decoding step of 3 sequences
        out = linear(x)
        assert out.shape == (3, 1, linear.out_features) and torch.isfinite(out).all()
        assert relative_error(out, x.double() @ references[name].T) <= QUANTIZED_TOLERANCE, name


def test_prompts_keep_the_fp32_product_of_the_grid_weights():
    model = quantize_model_(tiny_model(seed=3), 8)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(8))
    expected = model(ids).logits
    decode_products(model, "dense", int8=True).install()
    assert torch.equal(model(ids).logits, expected)


def test_a_rows_int8_result_does_not_depend_on_the_other_rows():
    model = quantize_model_(tiny_model(seed=2), 8)
    decode_products(model, "dense", int8=True).install()
    x = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(7))
    x[2] *= 50.0  # a loud neighbour would change a per-batch input scale
    batched = model.model.blocks[0].att.key(x)
    alone = model.model.blocks[0].att.key(x[:1])
    assert torch.equal(batched[:1], alone)


def test_int8_kernels_need_an_8_bit_model():
    with pytest.raises(ConfigError, match="8-bit grid"):
        decode_products(tiny_model(), "dense", int8=True)
    with pytest.raises(ConfigError, match="8-bit grid"):
        decode_products(quantize_model_(tiny_model(), 4), "dense", int8=True)


def test_the_engine_decodes_an_8_bit_model_with_int8_weights():
    model, tokenizer = load_model(None, weight_bits=8)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=2))
    with engine.runner.products:  # the decoding step's products
        assert all(isinstance(linear, Product) and linear.int8 for _, linear in quantized_linears(model))
    request = GenerationRequest("a", tokenizer.encode("ROMEO:"), SamplingParams(max_tokens=12, seed=1))
    events = [event for step in generate(engine, [request]) for event in step]
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 12
    assert "".join(e.text for e in events)


def test_eval_decode_scores_what_the_decoder_computes(tmp_path, capsys, monkeypatch):
    """``spikegpt eval --decode``: the spike-driven bundled model read token by token through the decoding step.
    Float weights: the parallel form's bits per byte (float rounding apart); 8-bit weights: the int8 products',
    the same to the last bit whether they read only the active rows or every row."""
    import json

    from spikegpt import bundled_model_path
    from spikegpt.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "play.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 40)
    args = ["eval", "--model", str(bundled_model_path("spikegpt-shakespeare-driven")), "--dataset", str(text),
            "--max-blocks", "1", "--ctx-len", "48", "--json"]  # fmt: skip

    def bits_per_byte(*extra: str) -> float:
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bits_per_byte"]

    parallel = bits_per_byte()
    assert bits_per_byte("--decode", "dense") == pytest.approx(parallel, rel=1e-5)
    int8_dense = bits_per_byte("--weight-bits", "8", "--decode", "dense")
    assert bits_per_byte("--weight-bits", "8", "--decode", "sparse") == int8_dense
    assert int8_dense != bits_per_byte("--weight-bits", "8")  # the int8 products, not the grid's fp32 ones
    assert main([*args, "--decode", "dense", "--weight-noise", "0.1"]) == 1
    assert "--decode and --weight-noise do not combine" in capsys.readouterr().err
