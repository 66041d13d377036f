"""Event-driven decoding in the engine: the same greedy text with sparse and dense products (traced step and
eager), the crossover file that ``auto`` reads, the weights' layout set-up, and the ``--decode`` flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from spikegpt import SpikeGPTForCausalLM, bundled_model_path
from spikegpt.errors import DecodeModeError
from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.products import (
    DEFAULT_CROSSOVER,
    Crossovers,
    decode_products,
    machine_id,
    prepare_weights,
    product_key,
    sparse_candidates,
)
from spikegpt.runtime.sampling import SamplingParams
from spikegpt.runtime.step import trace_decode_step

PROMPTS = ("ROMEO:\nWhat say you", "First Citizen:\nBefore we proceed", "KING HENRY:\n", "O, ")


def greedy_texts(engine: Engine, prompts=PROMPTS, tokens: int = 40) -> dict[str, str]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    requests = [GenerationRequest(str(i), engine.tokenizer.encode(p), params) for i, p in enumerate(prompts)]
    texts = {str(i): "" for i in range(len(prompts))}
    for events in generate(engine, requests):
        for event in events:
            assert event.finish_reason in (None, "length"), event.error
            texts[event.request_id] += event.text
    return texts


@pytest.fixture(scope="module")
def bundled():
    """The bundled Tiny Shakespeare model: trained weights, so its relu(k)² inputs have real zeros (~60%)."""
    return load_model()


@pytest.fixture(scope="module")
def bundled_driven():
    """The bundled spike-driven model: every block's projection reads integer spike counts (about half zeros)."""
    return load_model(bundled_model_path("spikegpt-shakespeare-driven"))


def test_every_block_projection_of_a_spike_driven_model_is_a_candidate_but_never_the_head(bundled_driven):
    model, _ = bundled_driven
    candidates = sparse_candidates(model)
    assert len(candidates) == 7 * model.config.n_layer  # time mix K, V, R, output; channel mix K, R, V
    assert model.head not in candidates  # it reads ln_out's dense output


@pytest.mark.parametrize("batch_invariant", [True, False], ids=["traced", "eager"])
@pytest.mark.parametrize("which", ["bundled", "bundled_driven"])
def test_sparse_and_dense_decoding_give_the_same_greedy_text(request, which, batch_invariant):
    """Both placements: relu(k)² into the channel mixes' V (residual) and spike counts into every projection."""
    model, tokenizer = request.getfixturevalue(which)
    dense = greedy_texts(
        Engine(model, tokenizer, EngineConfig(max_batch=4, batch_invariant=batch_invariant, decode="dense"))
    )
    sparse = greedy_texts(
        Engine(model, tokenizer, EngineConfig(max_batch=4, batch_invariant=batch_invariant, decode="sparse"))
    )
    assert sparse == dense
    assert all(len(text) > 20 for text in dense.values())


def test_the_traced_step_records_event_driven_products_only_when_asked(bundled):
    model, _ = bundled
    tokens, state = torch.zeros(2, 1, dtype=torch.long), model.fresh_state(2)
    for mode, calls in (("dense", 0), ("sparse", model.config.n_layer)):
        products = decode_products(model, mode, batch=2)
        step = trace_decode_step(model, tokens, state, products)
        graph = str(step.traced.inlined_graph)
        assert graph.count("spikegpt::sparse_linear") == calls, mode
    assert all("forward" not in m.__dict__ for m in sparse_candidates(model)), "the model is left as it was"


def test_sparse_logits_equal_dense_logits_to_float_tolerance(bundled):
    """One step from the same state: the products differ only in summation order."""
    model, tokenizer = bundled
    prompt = torch.tensor([tokenizer.encode("ROMEO:\nWhat say you, sir")])
    state = model(prompt, use_cache=True).state
    token = prompt[:, -1:]
    with torch.inference_mode():
        dense = model(token, state=state.clone()).logits
        with decode_products(model, "sparse", batch=1):
            sparse = model(token, state=state).logits
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-5)


def measured_crossovers(model, value: float, batches: tuple[int, ...], dtype: torch.dtype | None = None) -> Crossovers:
    """A crossover file's entries: ``value`` for every event-driven candidate at these batches, for its product of
    ``dtype`` (``torch.int8``: the int8 one; None: its weights')."""
    products = {}
    for module in sparse_candidates(model):
        n_out, n_in = module.weight.shape
        products |= {product_key(dtype or module.weight.dtype, b, n_in, n_out): value for b in batches}
    return Crossovers(machine_id(torch.device("cpu")), products)


def crossover_file(tmp_path, value: float, model, batch: int) -> Crossovers:
    """``measured_crossovers`` at one batch, saved and loaded as the engine loads it."""
    path = tmp_path / "crossover.json"
    measured_crossovers(model, value, (batch,)).save(path)
    return Crossovers.load(torch.device("cpu"), path)


def test_auto_follows_the_measured_crossover_and_a_dense_batch_falls_back(bundled, tmp_path, monkeypatch):
    model, _ = bundled
    never = decode_products(model, "auto", 4, crossover_file(tmp_path, 0.0, model, batch=4))
    assert never.thresholds == {}  # measured never to win: the plain dense product, no operator call
    always = decode_products(model, "auto", 4, crossover_file(tmp_path, 1.0, model, batch=4))
    assert set(always.thresholds.values()) == {1.0}
    # measured at 0.5: a mostly-zero row of relu(k)^2 goes event-driven, a filled-in one densely
    half = decode_products(model, "auto", 4, crossover_file(tmp_path, 0.5, model, batch=4))
    from spikegpt.kernels import sparse_torch

    calls = []
    event_driven = sparse_torch._active_rows_product
    monkeypatch.setattr(sparse_torch, "_active_rows_product", lambda *a: calls.append(1) or event_driven(*a))
    with half:
        value = sparse_candidates(model)[0]  # the product module swapped in for the channel mix's V
        value(torch.relu(torch.randn(4, 1, value.in_features) - 0.5) ** 2)  # ~31% active, well below 0.5: sparse
        assert len(calls) == 1
        value(torch.rand(4, 1, value.in_features) + 0.1)  # no zeros: dense
        assert len(calls) == 1


def test_the_crossover_file_absent_corrupt_and_merged(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("SPIKEGPT_CROSSOVER", str(tmp_path / "none.json"))
    absent = Crossovers.load(cpu)
    assert absent.lookup(torch.float32, 1, 768, 3072) == DEFAULT_CROSSOVER and absent.source == "default"
    path = tmp_path / "x.json"
    Crossovers("another machine", {"float32/b1/8x8": 0.9}).save(path)
    Crossovers(machine_id(cpu), {"float32/b1/8x8": 0.4}).save(path)
    data = json.loads(path.read_text())
    assert set(data["machines"]) == {"another machine", machine_id(cpu)}
    assert Crossovers.load(cpu, path).lookup(torch.float32, 1, 8, 8) == 0.4
    path.write_text("{not json")
    with pytest.raises(DecodeModeError, match="not a crossover file"):
        Crossovers.load(cpu, path)


def test_bad_decode_modes_are_refused(bundled):
    model, tokenizer = bundled
    with pytest.raises(DecodeModeError, match="decode must be one of auto, dense, sparse"):
        Engine(model, tokenizer, EngineConfig(max_batch=1, decode="fast"))
    from spikegpt.serve.settings import ServeSettings, SettingsError

    with pytest.raises(SettingsError, match="decode must be one of"):
        ServeSettings(decode="fast")
    assert ServeSettings.from_env({"SPIKEGPT_DECODE": "sparse"}).decode == "sparse"


def test_the_engine_lays_out_the_weights_not_the_model(tmp_path):
    """The model keeps the layout it was built or loaded with; the engine's CPU set-up makes every Linear
    input-major. Off the CPU only the event-driven candidates are (a meta-device model stands in for a GPU)."""
    model = SpikeGPTForCausalLM(tiny_config())
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))
    prepare_weights(model)
    assert all(m.weight.t().is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))
    on_meta = SpikeGPTForCausalLM(tiny_config()).to("meta")
    prepare_weights(on_meta, "dense")
    assert all(m.weight.is_contiguous() for m in on_meta.modules() if isinstance(m, torch.nn.Linear))
    prepare_weights(on_meta, "auto")
    candidates = set(sparse_candidates(on_meta))
    for m in on_meta.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.t().is_contiguous() == (m in candidates)


def test_generate_decode_flag_gives_the_same_text():
    def generate(mode: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "spikegpt.cli", "generate", "--prompt", "ROMEO:", "--temperature", "0"]
        return subprocess.run(
            [*command, "--max-new-tokens", "30", "--decode", mode], capture_output=True, text=True, timeout=120
        )

    dense, sparse = generate("dense"), generate("sparse")
    assert dense.returncode == 0 and sparse.returncode == 0, dense.stderr + sparse.stderr
    assert sparse.stdout == dense.stdout and len(dense.stdout.strip()) > 10
