"""Products as modules: every mode and composition against the dense fp32 product, the combinations refused with a
typed error naming both modes, a product installed over another composing with it and restoring it, parameters
and state-dict keys untouched, and no ``forward`` patched anywhere (in the package's code or on any module).

Tolerances: an int8 product rounds a real-valued input to 8 bits per row, about 0.7% of the largest output
(``tests/quant/test_int8.py`` explains the 3% bound), and multiplies spike counts as they are, so for those it is the
fp32 product up to float rounding; float products of the same weights differ only in summation order (1e-5
relative). The event-driven int8 product adds the same whole numbers as the dense one, so the two are compared bit
for bit, as is a row's result alone and among 15 others.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import lively_weights_, relative_error, tiny_config
from test_products import greedy_texts, measured_crossovers

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
    spike_reading_products,
    step_products,
)
from spikegpt.runtime.sampling import SamplingParams
from spikegpt.runtime.step import trace_decode_step

REPOSITORY = Path(__file__).resolve().parents[2]
QUANTIZED_TOLERANCE = 3e-2  # an int8 product's rounding of real-valued inputs (see the module docstring)
FLOAT_TOLERANCE = 1e-5  # summation order of a float32 product of width <= 128


def tiny(placement: str = "inputs", bits: int | None = 8) -> SpikeGPTForCausalLM:
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(spike_placement=placement)), seed=5).eval()
    return quantize_model_(model, bits) if bits is not None else model


def decoding_inputs(width: int, seed: int, counts: bool) -> dict[str, torch.Tensor]:
    """One token for each of 3 rows, with about half zeros, of what the product reads: signed spike counts
    (``counts``), or relu(k)² and real values."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(3, 1, width, generator=g) < 0.5
    if counts:
        return {"counts": torch.randint(-3, 4, (3, 1, width), generator=g).float() * keep}
    return {
        "relu2": torch.relu(torch.randn(3, 1, width, generator=g)) ** 2 * keep,
        "real": torch.randn(3, 1, width, generator=g) * keep,
    }


MODES = {
    "event_driven": ProductMode(event_driven=1.0),
    "int8": ProductMode(int8=True),
    "int8+event_driven": ProductMode(int8=True, event_driven=1.0),
    "int8+event_driven_above_crossover": ProductMode(int8=True, event_driven=0.1),
}


def reads_counts(model: SpikeGPTForCausalLM) -> set[str]:
    """The qualified names of the products that read spike counts."""
    counts = {id(m) for m in spike_reading_products(model)}
    return {n for n, linear in quantized_linears(model) if id(linear) in counts}


@pytest.mark.parametrize("placement", ["inputs", "residual"])
@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_and_composition_against_the_dense_fp32_product(name, placement):
    """On a model on the 8-bit grid its float weights are the grid: the dense fp32 product is the reference. Each
    product gets what it reads: spike counts (every block product of the ``inputs`` placement), which an int8
    product multiplies exactly, or real values, which it rounds to 8 bits per row."""
    mode = MODES[name]
    model = tiny(placement)
    counts = reads_counts(model)
    assert (len(counts) > 0) == (placement == "inputs")
    weights = {n: linear.weight.detach().double().clone() for n, linear in quantized_linears(model)}
    with Products(model, {n: mode for n in weights}):
        for i, (n, product) in enumerate(quantized_linears(model)):
            assert isinstance(product, Product) and product.mode == mode
            tolerance = QUANTIZED_TOLERANCE if mode.int8 and n not in counts else FLOAT_TOLERANCE
            for kind, x in decoding_inputs(product.in_features, seed=i, counts=n in counts).items():
                out = product(x)
                assert out.shape == (3, 1, product.out_features) and out.dtype == torch.float32
                assert relative_error(out, x.double() @ weights[n].T) <= tolerance, (n, kind)
            prompt = torch.randn(2, 5, product.in_features)  # several positions per row: the dense fp32 product
            assert torch.equal(product(prompt), F.linear(prompt, product.weight))
    assert all(type(linear) is torch.nn.Linear for _, linear in quantized_linears(model)), "restored"


@pytest.mark.parametrize("placement", ["inputs", "residual"])
def test_event_driven_int8_is_the_dense_int8_product(placement):
    """Only the int8 rows of the batch's nonzero inputs: the very same whole numbers summed exactly, so the same
    bits, for spike counts and for real values (quantized per row first, their zeros staying zeros), and whether the
    crossover sends a batch to the dense kernel or not."""
    model = tiny(placement)
    names = [n for n, _ in quantized_linears(model)]
    counts = reads_counts(model)
    dense = Products(model, {n: ProductMode(int8=True) for n in names})
    for limit in (1.0, 0.3):
        driven = Products(model, {n: ProductMode(int8=True, event_driven=limit) for n in names})
        for i, n in enumerate(names):
            for kind, x in decoding_inputs(model.get_submodule(n).in_features, seed=10 + i, counts=n in counts).items():
                with dense:
                    expected = model.get_submodule(n)(x)
                with driven:
                    out = model.get_submodule(n)(x)
                assert torch.equal(out, expected), (n, kind, limit)


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
        ("int8", "fake_quantized", lambda model: ProductMode(int8=True, fake_quantized=4)),
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
    int8 = decode_products(model, "dense", int8=True).install()
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
    for mode in MODES.values():
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


@pytest.mark.parametrize("decode", ["sparse", "auto"])
@pytest.mark.parametrize("name", ["spikegpt-shakespeare", "spikegpt-shakespeare-driven"])
@torch.no_grad()
def test_a_rows_int8_bits_alone_and_among_15_others(name, decode):
    """The engine's traced step with int8 products (every candidate event-driven, or across a crossover of 0.5
    inside each call: one row's active inputs stay below it where the union of 16 rows' does not), at 1 and at 16
    rows: the row's logits and state are the same bits alone as among 15 others."""
    model, _ = load_model(bundled_model_path(name), weight_bits=8)
    crossovers = measured_crossovers(model, 0.5, (1, 16), torch.int8)
    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, model.config.vocab_size, (16, 12), generator=g)
    tokens = torch.randint(0, model.config.vocab_size, (16, 1), generator=g)
    state = model(prompts, use_cache=True).state
    crowd = trace_decode_step(model, tokens, state, step_products(model, decode, 16, crossovers))
    alone = trace_decode_step(model, tokens[:1], state.select([0]), step_products(model, decode, 1, crossovers))
    logits, after, _ = crowd(tokens, state)
    logits_alone, after_alone, _ = alone(tokens[:1], state.select([0]))
    assert torch.equal(logits[:1], logits_alone)
    for crowded, single in zip(after.select([0]).tensors(), after_alone.tensors(), strict=True):
        assert torch.equal(crowded, single)


@torch.no_grad()
def test_the_traced_step_records_the_int8_operators(int8_backend):
    """Each int8 product is one operator call in the traced graph (the compiled kernels', or the reference's where
    they cannot be built), so the event-driven choice stays inside the call; the traced step computes the eager
    step's bits."""
    namespace = "spikegpt_cpu" if int8_backend == "compiled" else "spikegpt"
    model = tiny()
    n_products, n_candidates = len(list(quantized_linears(model))), len(sparse_candidates(model))
    tokens, state = torch.tensor([[1], [2]]), model(torch.tensor([[3, 4, 5], [6, 7, 8]]), use_cache=True).state
    for decode, event_driven in (("dense", 0), ("sparse", n_candidates)):
        products = decode_products(model, decode, batch=2, int8=True)
        step = trace_decode_step(model, tokens, state, products)
        graph = str(step.traced.inlined_graph)
        assert graph.count(f"{namespace}::int8_sparse_linear") == event_driven, decode
        assert graph.count(f"{namespace}::int8_linear") == n_products - event_driven, decode
        with products:
            eager = model(tokens, state=state)
        assert torch.equal(step(tokens, state)[0], eager.logits[:, -1])


@torch.no_grad()
def test_generate_decodes_an_8_bit_model_with_the_engines_int8_step(seed):
    """generate() of a model on the 8-bit grid decodes through the engine's traced step with int8 products, its
    logits the eager forward's with those products (a float model's are its plain forward's:
    tests/hub/test_hugging_face.py)."""
    from spikegpt.runtime.step import _GENERATE_STEPS

    model = tiny()
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(seed))
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    (step,) = _GENERATE_STEPS[model][1].values()
    assert "int8_linear" in str(step.traced.inlined_graph)
    eager = model(prompt, use_cache=True, logits_to_keep=1)  # as generate() reads the prompt
    with step_products(model, "auto", 2):
        for i, logits in enumerate(out.logits):
            assert torch.equal(logits, eager.logits[:, -1]), i
            eager = model(out.sequences[:, prompt.shape[1] + i : prompt.shape[1] + i + 1], state=eager.state)


@torch.no_grad()
def test_generate_of_an_8_bit_model_follows_its_weights_when_they_change_in_place(seed):
    """The int8 step holds codes made from the weights when it was traced: after an in-place change of the weights
    (``load_state_dict``, an optimizer step) generate() decodes with the new ones, as a fresh model of them does."""
    config = tiny_config(spike_placement="inputs")
    model, other = tiny(), quantize_model_(lively_weights_(SpikeGPTForCausalLM(config), seed=9).eval(), 8)
    prompt = torch.randint(0, model.config.vocab_size, (1, 4), generator=torch.Generator().manual_seed(seed))
    before = model.generate(prompt, max_new_tokens=8, do_sample=False)
    model.load_state_dict(other.state_dict())
    after = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(after, other.generate(prompt, max_new_tokens=8, do_sample=False))
    assert not torch.equal(after, before)  # (the two models decode differently: the check above reads something)


@pytest.mark.parametrize("placement", ["inputs", "residual"])
@torch.no_grad()
def test_the_traced_step_calls_no_python(placement):
    """Without gradients the spike functions run as plain operators: the traced step holds no Python callback (an
    autograd Function in a trace is one, a ``^Name`` node, called back into Python at every step)."""
    model = tiny(placement)
    tokens = torch.tensor([[1], [2]])
    step = trace_decode_step(model, tokens, model.fresh_state(2), decode_products(model, "sparse", 2, int8=True))
    graph = str(step.traced.inlined_graph)
    assert " = ^" not in graph, [line for line in graph.splitlines() if " = ^" in line][:3]


@pytest.mark.parametrize("placement", ["inputs", "residual"])
def test_the_traced_step_records_no_detach_and_no_needless_conversion(placement):
    """Each operation of a traced step costs the interpreter a few microseconds, a small model's decoding time on a
    CPU: the recorded fp32 step holds no ``detach`` (it runs without gradients) and no ``to`` that keeps the dtype
    (those left make spikes of booleans). Run with gradients on, it gives the same bits as without them."""
    model = tiny(placement)
    tokens, state = torch.tensor([[1], [2]]), model.fresh_state(2)
    step = trace_decode_step(model, tokens, state, decode_products(model, "dense", 2))
    nodes = list(step.traced.inlined_graph.nodes())
    assert not [node for node in nodes if node.kind() == "aten::detach"]
    conversions = [node for node in nodes if node.kind() == "aten::to"]
    assert conversions  # (the check below reads something)
    for node in conversions:
        assert node.inputsAt(0).type().scalarType() != node.output().type().scalarType(), node
    with torch.no_grad():
        quiet = step(tokens, state)[0]
    assert torch.equal(step(tokens, state)[0], quiet)


def test_a_crossover_of_zero_is_a_mode_set():
    """event_driven=0.0 (dense unless every input is zero) is event-driven, though 0.0 == False."""
    assert ProductMode(event_driven=0.0).names == ("event_driven",)
    assert str(ProductMode(event_driven=0.0, int8=True)) != str(ProductMode(int8=True))
    assert ProductMode().names == ()
