"""Products as modules: every mode and composition against the dense fp32 product, the combinations refused with a
typed error naming both modes, a product installed over another composing with it and restoring it, parameters
and state-dict keys untouched, and no ``forward`` patched anywhere (in the package's code or on any module).

Tolerances: the dynamic int8 kernel rounds its input to 7 bits per row, about 1% of the largest output
(``tests/quant/test_int8.py`` explains the 3% bound); float products of the same weights differ only in summation
order (1e-5 relative). The event-driven int8 product adds the same whole numbers as the dense int8 kernel, so the
two are compared bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import lively_weights_, tiny_config
from test_products import greedy_texts

from spikegpt import SpikeGPTForCausalLM, bundled_model_path
from spikegpt.errors import ProductCombinationError
from spikegpt.hub.checkpoint import load_model
from spikegpt.quant.grids import dequantize, quantize_model_, quantize_weight, quantized_linears
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.products import (
    Product,
    ProductMode,
    Products,
    decode_products,
    fake_quantized_products,
    sparse_candidates,
)
from spikegpt.runtime.sampling import SamplingParams

REPOSITORY = Path(__file__).resolve().parents[2]
DYNAMIC_TOLERANCE = 3e-2  # the dynamic kernel's input rounding (see the module docstring)
FLOAT_TOLERANCE = 1e-5  # summation order of a float32 product of width <= 128


def tiny(placement: str = "inputs", bits: int | None = 8) -> SpikeGPTForCausalLM:
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(spike_placement=placement)), seed=5).eval()
    return quantize_model_(model, bits) if bits is not None else model


def decoding_inputs(width: int, seed: int) -> dict[str, torch.Tensor]:
    """One token for each of 3 rows, with about half zeros: signed spike counts, relu(k)² and real values."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(3, 1, width, generator=g) < 0.5
    return {
        "counts": torch.randint(-3, 4, (3, 1, width), generator=g).float() * keep,
        "relu2": torch.relu(torch.randn(3, 1, width, generator=g)) ** 2 * keep,
        "real": torch.randn(3, 1, width, generator=g) * keep,
    }


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.double() - reference).abs().max() / reference.abs().max())


MODES = {
    "event_driven": (ProductMode(event_driven=1.0), FLOAT_TOLERANCE),
    "int8_dynamic": (ProductMode(int8="dynamic"), DYNAMIC_TOLERANCE),
    "int8_weight_only": (ProductMode(int8="weight_only"), FLOAT_TOLERANCE),
    "int8_dynamic+event_driven": (ProductMode(int8="dynamic", event_driven=1.0), DYNAMIC_TOLERANCE),
    "int8_weight_only+event_driven": (ProductMode(int8="weight_only", event_driven=1.0), FLOAT_TOLERANCE),
    "int8_dynamic+event_driven_above_crossover": (ProductMode(int8="dynamic", event_driven=0.1), DYNAMIC_TOLERANCE),
}


@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_and_composition_against_the_dense_fp32_product(name):
    """On a model on the 8-bit grid its float weights are the grid: the dense fp32 product is the reference."""
    mode, tolerance = MODES[name]
    model = tiny()
    weights = {n: linear.weight.detach().double().clone() for n, linear in quantized_linears(model)}
    with Products(model, {n: mode for n in weights}):
        for i, (n, product) in enumerate(quantized_linears(model)):
            assert isinstance(product, Product) and product.mode == mode
            for kind, x in decoding_inputs(product.in_features, seed=i).items():
                out = product(x)
                assert out.shape == (3, 1, product.out_features) and out.dtype == torch.float32
                assert relative_error(out, x.double() @ weights[n].T) <= tolerance, (n, kind)
            prompt = torch.randn(2, 5, product.in_features)  # several positions per row: the dense fp32 product
            assert torch.equal(product(prompt), F.linear(prompt, product.weight))
    assert all(type(linear) is torch.nn.Linear for _, linear in quantized_linears(model)), "restored"


@pytest.mark.parametrize("kernel", ["dynamic", "weight_only"])
def test_event_driven_int8_is_the_dense_int8_product(kernel):
    """Only the int8 rows of nonzero inputs, with the dense kernel's arithmetic: for the dynamic kernel the very
    same whole numbers (every integer input quantized as fbgemm does, halfway cases included), so the same bits; for
    the weight-only kernel float32 sums in another order."""
    model = tiny()
    names = [n for n, _ in quantized_linears(model)]
    dense = Products(model, {n: ProductMode(int8=kernel) for n in names})
    driven = Products(model, {n: ProductMode(int8=kernel, event_driven=1.0) for n in names})
    for i, n in enumerate(names):
        for kind, x in decoding_inputs(model.get_submodule(n).in_features, seed=10 + i).items():
            with dense:
                expected = model.get_submodule(n)(x)
            with driven:
                out = model.get_submodule(n)(x)
            if kernel == "dynamic":
                assert torch.equal(out, expected), (n, kind)
            else:
                assert relative_error(out, expected.double()) <= FLOAT_TOLERANCE, (n, kind)


def test_fake_quantization_computes_on_the_grid_and_trains_the_float_weights():
    """Quantization-aware training's product: the grid's function forward, the float master weights' gradient
    backward; the parameters, their names and the state dict are the model's own, so optimizers, checkpoints and
    resumed runs see no change."""
    model = tiny(bits=None)
    keys, params = list(model.state_dict()), list(model.parameters())
    products = fake_quantized_products(model, 4).install()
    assert list(model.state_dict()) == keys and list(model.parameters()) == params
    key = model.model.blocks[0].att.key
    assert isinstance(key, Product) and key.mode == ProductMode(fake_quantized=4)
    x = torch.randn(2, 7, key.in_features)
    grid = dequantize(*quantize_weight(key.weight, 4))
    assert torch.equal(key(x), F.linear(x, grid))
    key(x).sum().backward()
    assert torch.allclose(key.weight.grad, x.reshape(-1, key.in_features).sum(0).expand_as(key.weight))
    fresh = tiny(bits=None)
    fake_quantized_products(fresh, 4).install()
    fresh.load_state_dict(model.state_dict())  # a checkpoint of a QAT run loads into another (a resume)
    assert torch.equal(fresh.model.blocks[0].att.key.weight, key.weight)
    products.restore()
    assert type(model.model.blocks[0].att.key) is torch.nn.Linear and list(model.parameters()) == params


@pytest.mark.parametrize(
    ("first", "second", "build"),
    [
        ("int8", "fake_quantized", lambda model: ProductMode(int8="dynamic", fake_quantized=4)),
        ("event_driven", "fake_quantized", lambda model: ProductMode(event_driven=1.0, fake_quantized=8)),
        ("fake_quantized", "event_driven", lambda model: decode_products(model, "sparse")),
        ("fake_quantized", "fake_quantized", lambda model: fake_quantized_products(model, 4)),
    ],
)
def test_an_impossible_combination_is_refused_naming_both_modes(first, second, build):
    """Directly, or by installing a product over one that is there (a QAT model decoded event-driven): refused
    before anything changes."""
    model = tiny(bits=None)
    fake_quantized_products(model, 8).install()
    before = dict(model.named_modules())
    with pytest.raises(ProductCombinationError) as refused:
        build(model)
    assert {refused.value.first, refused.value.second} == {first, second}
    assert first in str(refused.value) and second in str(refused.value)
    assert dict(model.named_modules()) == before


def test_a_product_installed_over_another_composes_and_leaving_it_restores_the_one_before():
    """An 8-bit model with int8 products installed for good, decoded event-driven for a while: the products in
    between are int8 and event-driven; afterwards the int8 ones are back (not the plain Linears)."""
    model = tiny()
    int8 = decode_products(model, "dense", int8="dynamic").install()
    int8_modules = {n: m for n, m in quantized_linears(model)}
    candidates = {id(m) for m in sparse_candidates(model)}
    with decode_products(model, "sparse") as driven:
        for n, module in quantized_linears(model):
            expected = {"int8", "event_driven"} if id(int8_modules[n]) in candidates else {"int8"}
            assert set(module.mode.names) == expected, n
        assert len(driven) == len(candidates)
    assert {n: m for n, m in quantized_linears(model)} == int8_modules
    int8.restore()
    assert all(type(m) is torch.nn.Linear for _, m in quantized_linears(model))


def _modules_with_own_forward(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if "forward" in module.__dict__]


def test_no_mode_patches_a_forward_on_any_module(tiny_model_dir):
    """Every mode and composition, installed, run and restored, and an engine decoding an 8-bit model event-driven:
    no module ever carries an instance-level ``forward``."""
    model = tiny()
    x = torch.randint(0, 3, (2, 1), dtype=torch.long)
    for mode, _ in MODES.values():
        with Products(model, {n: mode for n, _ in quantized_linears(model)}):
            model(x, state=model.fresh_state(2))
            assert _modules_with_own_forward(model) == []
    float_model = tiny(bits=None)
    with fake_quantized_products(float_model, 4):
        float_model(torch.randint(0, 3, (2, 5)))
        assert _modules_with_own_forward(float_model) == []
    model8, tokenizer = load_model(tiny_model_dir, weight_bits=8)
    engine = Engine(model8, tokenizer, EngineConfig(max_batch=2, decode="sparse", batch_invariant=False))
    for _ in generate(
        engine, [GenerationRequest("a", tokenizer.encode("Hello"), SamplingParams(max_tokens=4, seed=1))]
    ):
        assert _modules_with_own_forward(model8) == []
    with engine.runner.products:
        assert _modules_with_own_forward(model8) == []


def test_no_code_in_the_package_assigns_a_forward():
    """Products are modules: nothing in the package sets ``<module>.forward`` or binds a function to an instance."""
    patch = re.compile(r"\.forward\s*=(?!=)|types\.MethodType")
    offenders = []
    for folder in ("spikegpt", "serve", "train", "kernels"):
        for path in (REPOSITORY / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if patch.search(line):
                    offenders.append(f"{path.relative_to(REPOSITORY)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("name", ["spikegpt-shakespeare", "spikegpt-shakespeare-driven"])
def test_an_8_bit_model_decodes_event_driven_with_the_dense_int8_text(name):
    """Both placements on the 8-bit grid: the engine's int8 products composed with event-driven ones (relu(k)² into
    the channel mixes' V; spike counts into every block projection) give the dense int8 engine's greedy text."""
    model, tokenizer = load_model(bundled_model_path(name), weight_bits=8)
    dense = greedy_texts(Engine(model, tokenizer, EngineConfig(max_batch=4, decode="dense")), tokens=24)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=4, decode="sparse"))
    composed = [n for n, mode in engine.runner.products.modes.items() if set(mode.names) == {"int8", "event_driven"}]
    assert len(composed) == len(sparse_candidates(model)) > 0
    assert greedy_texts(engine, tokens=24) == dense
    assert all(len(text) > 15 for text in dense.values())
