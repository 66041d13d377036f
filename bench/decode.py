"""Decoding on a CPU, random weights: our steps against the peers, each against the bound of the bytes it reads.

The bound: decoding must read every weight it uses once per step, so tokens/s ≤ bandwidth ÷ bytes read per token
(the embedding contributes one row per sequence), with the bandwidth measured in the same run (bytes read + written
per second by ``Tensor.copy_``) for a 512 MB buffer (main memory) and for a buffer the size of the weights (a small
model's weights can live in a large last-level cache; the faster of the two is the bound), at each thread count.

Without ``--placement`` (fp32, batch 1): our step three ways (``--forms``: the model's forward, the serving engine's
traced step, torch.compile) against transformers' RwkvForCausalLM (its recurrent path with ``state``) and the ChatRWKV
``rwkv`` package (``pip install spikegpt[bench]``, strategy ``cpu fp32``, an RWKV-4 checkpoint of random weights
written to a temporary file); and prefill: our parallel form over a 512-token prompt against feeding it token by
token.

With ``--placement residual|inputs``: the engine's traced step of a model of that placement (``inputs``: every block
projection reads spike counts; ``residual``: the channel mixes' V reads
relu(k)²), at each size, batch (1, 16) and thread count (1, 2), in these modes (``--modes``): ``fp32`` (dense
products), ``int8`` (the model on the 8-bit grid, its products through the compiled int8 kernels: real-valued inputs
quantized per row, spike counts as they are), ``int8_sparse`` (the candidates event-driven: only the int8 rows of
the batch's nonzero inputs) and ``int8_auto`` (event-driven where the crossover of ``bench/crossover.py --dtype
int8`` says, dense above it; unmeasured, 30% active), and on request ``fp32_sparse``, ``fp32_auto``. The modes run
interleaved step by step, so a machine whose load changes slows them alike. Densities: ``bundled`` = each product's
active fraction measured on the bundled model of the placement over held-out Tiny Shakespeare (per kind of product,
averaged over its layers; ``inputs``: the spike-driven model the frontier shipped, from
``bench/results/frontier.json``; ``residual``: from ``bench/results/driven-study.json``); ``binary`` = the same for
the binary-spike run of that study; a frontier row's JSON file = that model's; ``measured`` = the random-weight model's
inputs as they are; a number = that fraction active in every candidate (each row keeps its largest |x|,
independently per row, so a batch's union fills in as real activations do; made inside the step, at a cost measured
and left out of the net figures). Each record has, per mode: tokens/s (net of that cost), bytes read per token (an
event-driven product reads the batch's union of active rows once), the bound and the fraction of it. The peers, at
batch 1 and each thread count, against the same bandwidth: the rwkv package (``cpu fp32`` and ``cpu fp32i8``),
transformers' RWKV, and llama.cpp at Q8_0 through ``llama-cpp-python`` on a random-weight model with as many weights
(``bench/llama_cpp_peer.py``; recorded as missing where the package is not installed). Then ``model.generate()`` of
the 8-bit model against its own step in a plain loop (transformers' loop overhead per token). The summary, per size
and thread count and batch: ``fraction_of_bound``, ``int8_event_vs_int8_dense``, ``vs_dense`` and, at batch 1,
``vs_rwkv_package`` (over the package's faster strategy), with the peers' figures and the generate() record.

Prints one JSON object per measurement (the first says which machine, when, with which arguments), then a summary.
    python bench/decode.py                                     # fp32 forms at 6x256 and 12x512
    python bench/decode.py --placement inputs                  # 8-bit and event-driven decoding, every size
    python bench/decode.py --sizes 12x768 --placement inputs   # one size: int8, int8 event-driven and the peers
    python bench/decode.py --quick --placement inputs          # a tiny model: checks that it all runs
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import emit

from spikegpt.hub.checkpoint import BUNDLED_MODELS

VOCAB = 50277


DEVICE = torch.device("cpu")  # --device


def copy_bandwidth(megabytes: int = 512, repeats: int = 7) -> float:
    """Bytes moved (read + written) per second by a large copy on ``DEVICE``."""
    src = torch.ones(megabytes * 2**20 // 4, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_time(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - start


def tokens_per_second(step, tokens: int, warmup: int = 8) -> tuple[float, float]:
    """Median and best tokens/s of ``step()`` (one token each), over ``tokens`` timed calls."""
    for _ in range(warmup):
        step()
    times = [_time(step) for _ in range(tokens)]
    return 1 / statistics.median(times), 1 / min(times)


def interleaved_steps_per_second(runs: dict, steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median and best steps/s of each ``runs[name]()``, timed in turn (one step of each, then again), so that a
    machine whose load changes during the run slows every variant alike and their ratios stay meaningful."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            times[name].append(_time(run))
    return {name: (1 / statistics.median(t), 1 / min(t)) for name, t in times.items()}


def ours(n_layer: int, d: int, **config):
    from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
    from spikegpt.runtime.products import prepare_weights

    config = SpikeGPTConfig(vocab_size=VOCAB, n_layer=n_layer, n_embd=d, dropout=0.0, **config)
    model = SpikeGPTForCausalLM(config).eval()
    with torch.no_grad():  # RWKV's init zeroes some projections; random weights make every matmul real work
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.to(DEVICE)
    prepare_weights(model)  # the engine's layout for the device
    return model


def decode_steps(model) -> dict:
    """Our batch-1 decoding step three ways: the model's forward (eager), the engine's default on a CPU (the same
    operations traced with torch.jit.trace) and the engine's --compile (torch.compile)."""
    from spikegpt.runtime.step import trace_decode_step

    def eager(token, state):
        out = model(token, state=state)
        return out.logits[:, -1], out.state, None

    token = torch.tensor([[4]])
    traced = trace_decode_step(model, token, model.fresh_state(1))
    return {"eager": eager, "traced": traced, "compiled": torch.compile(eager, dynamic=False)}


@torch.inference_mode()
def bench_ours(n_layer: int, d: int, tokens: int, prefill_len: int, forms: list[str]) -> tuple[dict, dict]:
    model = ours(n_layer, d)
    decode = {"bytes_per_token": step_bytes(model, False, 1)}
    steps = decode_steps(model)
    for form in forms:
        box = {"state": model(torch.tensor([[1, 2, 3]]), use_cache=True).state, "token": torch.tensor([[4]])}

        def step(run=steps[form], box=box):
            logits, box["state"], _ = run(box["token"], box["state"])
            box["token"] = logits.argmax(-1, keepdim=True)

        started = time.perf_counter()
        step()  # the first call traces or compiles
        decode[f"{form}_first_call_s"] = time.perf_counter() - started
        decode[f"{form}_tok_s"], decode[f"{form}_best_tok_s"] = tokens_per_second(step, tokens)

    prompt = torch.randint(0, VOCAB, (1, prefill_len))
    model(prompt[:, :16])  # warm up
    parallel = min(_time(lambda: model(prompt, logits_to_keep=1)) for _ in range(3))

    def token_by_token():
        state = model.fresh_state(1)
        for t in range(prefill_len):
            state = model(prompt[:, t : t + 1], state=state, logits_to_keep=1).state

    sequential = _time(token_by_token)
    prefill = {
        "prompt_tokens": prefill_len,
        "parallel_tok_s": prefill_len / parallel,
        "token_by_token_tok_s": prefill_len / sequential,
        "speedup": sequential / parallel,
    }
    return decode, prefill


@torch.inference_mode()
def bench_hf(n_layer: int, d: int, tokens: int) -> dict:
    from transformers import RwkvConfig, RwkvForCausalLM

    config = RwkvConfig(
        vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n_layer, attention_hidden_size=d, intermediate_size=4 * d
    )
    model = RwkvForCausalLM(config).eval()
    out = model(torch.tensor([[1, 2, 3]]), use_cache=True)
    box = {"state": out.state, "token": torch.tensor([[4]])}

    def step():
        out = model(box["token"], state=box["state"], use_cache=True)
        box["state"] = out.state
        box["token"] = out.logits[:, -1].argmax(-1, keepdim=True)

    median, best = tokens_per_second(step, tokens)
    return {"tok_s": median, "best_tok_s": best}


def rwkv4_checkpoint(path: Path, n_layer: int, d: int) -> None:
    """Random weights in the RWKV-4 key layout the ChatRWKV package loads."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    w = {"emb.weight": rand(VOCAB, d), "ln_out.weight": torch.ones(d), "ln_out.bias": torch.zeros(d)}
    w["head.weight"] = rand(VOCAB, d)
    for i in range(n_layer):
        b = f"blocks.{i}"
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            w[f"{b}.{ln}.weight"], w[f"{b}.{ln}.bias"] = torch.ones(d), torch.zeros(d)
        w[f"{b}.att.time_decay"], w[f"{b}.att.time_first"] = rand(d), rand(d)
        for m in ("k", "v", "r"):
            w[f"{b}.att.time_mix_{m}"] = torch.rand(1, 1, d, generator=g)
        for name in ("key", "value", "receptance", "output"):
            w[f"{b}.att.{name}.weight"] = rand(d, d)
        w[f"{b}.ffn.time_mix_k"], w[f"{b}.ffn.time_mix_r"] = (torch.rand(1, 1, d, generator=g) for _ in range(2))
        w[f"{b}.ffn.key.weight"], w[f"{b}.ffn.value.weight"] = rand(4 * d, d), rand(d, 4 * d)
        w[f"{b}.ffn.receptance.weight"] = rand(d, d)
    torch.save(w, path)


_CHECKPOINTS: dict[tuple[int, int, int], Path] = {}  # (n_layer, d, vocab) -> an RWKV-4 checkpoint, for this run


def rwkv4_checkpoint_for(n_layer: int, d: int) -> Path:
    """The random RWKV-4 checkpoint of this size, written once per run (both strategies and every thread count)."""
    key = (n_layer, d, VOCAB)
    if key not in _CHECKPOINTS:
        folder = Path(tempfile.mkdtemp(prefix="rwkv4-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _CHECKPOINTS[key] = folder / "rwkv4.pth"
        rwkv4_checkpoint(_CHECKPOINTS[key], n_layer, d)
    return _CHECKPOINTS[key]


@torch.inference_mode()
def bench_rwkv_package(n_layer: int, d: int, tokens: int, strategy: str = "cpu fp32") -> dict:
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    try:
        from rwkv.model import RWKV
    except ImportError:
        return {"missing": "the rwkv package is not installed (pip install spikegpt[bench])"}
    model = RWKV(model=str(rwkv4_checkpoint_for(n_layer, d)), strategy=strategy, verbose=False)
    _, state = model.forward([1, 2, 3], None)
    box = {"state": state, "token": 4}

    def step():
        logits, box["state"] = model.forward([box["token"]], box["state"])
        box["token"] = int(logits.argmax())

    median, best = tokens_per_second(step, tokens, warmup=2)
    return {"tok_s": median, "best_tok_s": best, "strategy": strategy}


# -- 8-bit and event-driven decoding (--placement) --------------------------------------------------------------


STUDY = Path(__file__).parent / "results" / "driven-study.json"
FRONTIER = Path(__file__).parent / "results" / "frontier.json"
RESIDUAL_BUNDLED = f"spikegpt/assets/{BUNDLED_MODELS[0]}"  # the residual placement's row in the study
# The decoding steps --placement times: (8-bit weights, --decode of the products)
MODES = {
    "fp32": (False, "dense"),
    "fp32_sparse": (False, "sparse"),
    "fp32_auto": (False, "auto"),
    "int8": (True, "dense"),
    "int8_sparse": (True, "sparse"),
    "int8_auto": (True, "auto"),
}
CPU_MODES = ["fp32", "int8", "int8_sparse", "int8_auto"]
GPU_MODES = ["fp32", "fp32_sparse", "fp32_auto"]  # (int8 products run on a CPU)


def placement_model(n_layer: int, d: int, placement: str):
    if placement == "inputs":
        return ours(n_layer, d, spike_placement="inputs", input_spikes="counts", spike_count_max=4)
    return ours(n_layer, d)


def product_kind(name: str) -> str:
    """'blocks.3.ffn.value' → 'ffn.value': what a product is, whatever its layer."""
    return re.sub(r"^.*blocks\.\d+\.", "", name)


def kind_densities(inputs: dict[str, dict[str, float]]) -> dict[str, float]:
    """Active-input fraction per kind of product from a zero fraction per product (or already per kind)."""
    kinds: dict[str, list[float]] = {}
    for name, measured in inputs.items():
        kinds.setdefault(product_kind(name), []).append(1 - measured["zero_fraction"])
    return {kind: sum(v) / len(v) for kind, v in kinds.items()}


def study_densities(label: str, placement: str) -> tuple[dict[str, float], str]:
    """Active-input fraction per kind of product measured on a real model, and where it came from: 'bundled' = the
    bundled model of ``placement`` (``inputs``: the spike-driven model the frontier shipped, its row of
    ``bench/results/frontier.json``; ``residual``: the default model's row of the driven study); 'binary' = the
    driven study's binary-spike run; a path to a JSON file = a frontier row (``RUNS/NAME/frontier-row.json``)."""
    if label.endswith(".json"):
        row = json.loads(Path(label).read_text())
        return kind_densities(row["inputs"]), f"{Path(label).parent.name}: {row.get('name', label)}"
    if label == "bundled" and placement == "inputs":
        results = json.loads(FRONTIER.read_text())
        row = next(r for r in results["models"] if r["name"] == results["shipped"])
        return kind_densities(row["inputs"]), f"{FRONTIER.name}: {row['name']} (spikegpt-shakespeare-driven)"
    models = json.loads(STUDY.read_text())["models"]
    if label == "bundled":
        found = [m for m in models if m["model"] == RESIDUAL_BUNDLED]
    else:
        found = [m for m in models if m.get("input_spikes") == "binary" and placement == "inputs"]
    if not found:
        raise SystemExit(f"{STUDY}: no {label!r} model for the {placement} placement")
    return kind_densities(found[0]["inputs"]), f"{STUDY.name}: {found[0]['name']}"


def synthetic_inputs(model, names: list[str], density) -> list:
    """Forward pre-hooks on the modules now at ``names`` (a product module where one is installed) giving each
    product's input exactly a fraction of nonzero values: per row, the largest |x|; where a row has fewer nonzeros
    than that (random weights fire at their own rate), kept zeros become spike counts of 1. ``density``: one
    fraction for every product, a fraction per kind of product, or None (left as they are)."""

    def hook(module, args, fraction):
        (x,) = args
        keep = max(1, int(fraction * int(x.shape[-1]) + 0.5))
        mask = torch.zeros_like(x).scatter_(-1, x.abs().topk(keep, dim=-1).indices, 1.0)
        return (mask * torch.where(x != 0, x, torch.ones_like(x)),)

    hooks = []
    for name in names:
        fraction = density.get(product_kind(name)) if isinstance(density, dict) else density
        if fraction is not None:
            module = model.get_submodule(name)
            hooks.append(module.register_forward_pre_hook(lambda m, a, f=fraction: hook(m, a, f)))
    return hooks


def input_densities(model, names: list[str], batch: int, steps: int = 4) -> dict:
    """Per candidate product, the mean fraction of nonzero inputs per row and of the batch's union, measured over a
    few eager steps of ``batch`` rows (with whatever hooks make the inputs)."""
    seen = {name: [0.0, 0.0] for name in names}

    def record(name, args):
        flat = args[0].reshape(-1, args[0].shape[-1])
        seen[name][0] += float(flat.ne(0).float().mean()) / steps
        seen[name][1] += float(flat.ne(0).any(0).float().mean()) / steps

    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: record(n, a)) for n in names]
    state, token = model.fresh_state(batch), torch.randint(0, VOCAB, (batch, 1), device=DEVICE)
    for _ in range(steps):
        out = model(token, state=state)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    for h in hooks:
        h.remove()
    return seen


def step_bytes(model, int8: bool, batch: int, event_driven: dict[str, float] | None = None) -> float:
    """Bytes a decoding step of ``batch`` rows reads: every product weight (fp32: 4 bytes a weight; int8: 1 byte and
    a 4-byte scale per output), every other parameter but the embedding table, one embedding row per row.
    ``event_driven``: the union density of each event-driven product's input, whose weight rows are read only for
    the active inputs (each once for the batch)."""
    from spikegpt.quant.grids import quantized_linears

    linears = dict(quantized_linears(model))
    product_weights = {id(linear.weight) for linear in linears.values()}
    embedding = model.model.emb.weight
    total = sum(
        p.numel() * p.element_size() for p in model.parameters() if id(p) not in product_weights and p is not embedding
    )
    total += batch * embedding.shape[1] * embedding.element_size()
    for name, linear in linears.items():
        codes = linear.weight.numel() * (1 if int8 else linear.weight.element_size())
        read = (event_driven or {}).get(name, 1.0)
        total += codes * read + (4 * linear.out_features if int8 else 0)
    return total


def bandwidth(weight_bytes: float, dram: float) -> float:
    """The faster of main memory (``dram``) and a buffer the size of the weights, which may fit in a large
    last-level cache (a small model's weights can)."""
    megabytes = max(1, int(weight_bytes) // 2**20)
    at_size = copy_bandwidth(megabytes=megabytes)
    threads = torch.get_num_threads()
    emit({"measure": "copy_bandwidth", "megabytes": megabytes, "bytes_per_s": at_size, "threads": threads})
    return max(dram, at_size)


def traced_run(model, products, batch: int, names: list[str], density):
    """One traced decoding step of ``batch`` rows per call, with ``products`` and the synthetic inputs of
    ``density`` (None: the inputs as they are), which the trace records inside the step."""
    from spikegpt.runtime.step import trace_decode_step

    tokens = torch.randint(0, VOCAB, (batch, 1), device=DEVICE)
    with products:  # installed first: the hooks go on the product modules the step will call
        hooks = synthetic_inputs(model, names, density)
        try:
            step = trace_decode_step(model, tokens, model.fresh_state(batch))
        finally:
            for h in hooks:
                h.remove()
    box = {"state": model.fresh_state(batch), "token": tokens}

    def run():
        logits, box["state"], _ = step(box["token"], box["state"])
        box["token"] = logits.argmax(-1, keepdim=True)

    return run


class Variants:
    """One size's models and the step variants timed on them: the fp32 model and its copy on the 8-bit grid."""

    def __init__(self, n_layer: int, d: int, placement: str):
        import copy

        from spikegpt.quant.grids import quantize_model_
        from spikegpt.runtime.products import sparse_candidates

        self.fp32 = placement_model(n_layer, d, placement)
        self.int8 = quantize_model_(copy.deepcopy(self.fp32), 8)
        names = {module: name for name, module in self.fp32.named_modules()}
        self.candidates = [names[m] for m in sparse_candidates(self.fp32)]

    def model(self, mode: str):
        return self.int8 if MODES[mode][0] else self.fp32

    def products(self, mode: str, batch: int, crossovers):
        from spikegpt.runtime.products import decode_products

        int8, decode = MODES[mode]
        return decode_products(self.model(mode), decode, batch, crossovers, int8=int8)


def density_cases(args) -> list[tuple[str, object, str]]:
    """(label, density for synthetic_inputs, source) per --densities value."""
    cases = []
    for label in args.densities:
        if label in ("bundled", "binary") or label.endswith(".json"):
            density, source = study_densities(label, args.placement)
        elif label == "measured":
            density, source = None, "this model's inputs"
        else:
            density, source = float(label), "synthetic"
        cases.append((label, density, source))
    return cases


@torch.inference_mode()
def bound_bandwidths(variants: Variants, dram: float) -> dict[bool, float]:
    """The bound's bandwidth at this thread count for the steps of fp32 weights (False) and of int8 ones (True),
    each for a buffer the size of its own weights (the fp32 ones may not fit a cache the int8 ones fit)."""
    return {int8: bandwidth(step_bytes(variants.model("int8" if int8 else "fp32"), int8, 1), dram)
            for int8 in (False, True)}  # fmt: skip


def bench_steps(variants: Variants, dims: dict, args, threads: int, bandwidths: dict[bool, float]) -> list[dict]:
    """The step records of one size at ``threads``: every batch and density, the modes interleaved; each mode's
    bound from ``bandwidths`` (``bound_bandwidths``) for its weights."""
    from spikegpt.runtime.products import Crossovers

    crossovers = Crossovers.load(DEVICE)
    records = []
    for batch in args.batches:
        products = {mode: variants.products(mode, batch, crossovers) for mode in args.modes}
        # the reference for the cost of the synthetic inputs: the first mode traced without them
        plain = traced_run(variants.model(args.modes[0]), products[args.modes[0]], batch, [], None)
        for label, density, source in density_cases(args):
            hooks = synthetic_inputs(variants.fp32, variants.candidates, density)
            measured = input_densities(variants.fp32, variants.candidates, batch)
            for h in hooks:
                h.remove()
            runs = {mode: traced_run(variants.model(mode), products[mode], batch, variants.candidates, density)
                    for mode in args.modes}  # fmt: skip
            if density is not None:
                runs["plain"] = plain
            timed = interleaved_steps_per_second(runs, args.tokens, args.warmup)
            # the synthetic inputs are made inside each traced step at the same cost: the first mode with and
            # without them measures it, and the net figures leave it out
            synthesis_s = max(0.0, 1 / timed[args.modes[0]][0] - 1 / timed["plain"][0]) if "plain" in timed else 0.0
            record = {"measure": "decode_step", "placement": args.placement, **dims, "threads": threads,
                      "batch": batch, "density": label, "density_source": source,
                      "row_density": _mean(m[0] for m in measured.values()),
                      "union_density": _mean(m[1] for m in measured.values()),
                      "crossover_source": crossovers.source,
                      "input_synthesis_s_per_step": synthesis_s, "modes": {}}  # fmt: skip
            for mode in args.modes:
                steps_s, best_steps_s = timed[mode]
                union = {name: measured[name][1] for name in products[mode].thresholds}
                read = step_bytes(variants.model(mode), MODES[mode][0], batch, union)
                net = batch / max(1e-9, 1 / steps_s - synthesis_s)
                bound = bandwidths[MODES[mode][0]] / read * batch
                record["modes"][mode] = {
                    "tok_s": steps_s * batch,
                    "best_tok_s": best_steps_s * batch,
                    "net_tok_s": net,
                    "bytes_per_token": read / batch,
                    "bandwidth_bytes_per_s": bandwidths[MODES[mode][0]],
                    "bound_tok_s": bound,
                    "fraction_of_bound": net / bound,
                    "event_driven_products": len(union),
                }
            records.append(emit(record))
    return records


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def bench_peers(variants: Variants, dims: dict, args, threads: int, bandwidths: dict[bool, float]) -> dict:
    """The peers at batch 1 and their fractions of the bound (the bandwidth of our steps with weights of the same
    width, ``bound_bandwidths``): the rwkv package (``cpu fp32``, ``cpu fp32i8``), transformers' RWKV, llama.cpp at
    Q8_0 (``bench/llama_cpp_peer.py``)."""
    n_layer, d = dims["n_layer"], dims["n_embd"]
    fp32_bytes = step_bytes(variants.fp32, False, 1)
    int8_bytes = step_bytes(variants.int8, True, 1)  # rwkv's fp32i8: a byte a weight, and a few vectors a matrix
    slow = max(3, args.tokens // 8)  # fp32i8 runs a few tokens per second at 12 x 768: fewer of them
    peers = {  # name: (result, bytes read per token, whether its weights are 8-bit)
        "rwkv_package_fp32": (bench_rwkv_package(n_layer, d, args.tokens, "cpu fp32"), fp32_bytes, False),
        "rwkv_package_fp32i8": (bench_rwkv_package(n_layer, d, slow, "cpu fp32i8"), int8_bytes, True),
        "transformers": (bench_hf(n_layer, d, args.tokens), fp32_bytes, False),
    }
    llama = bench_llama_cpp(n_layer, d, threads, args.tokens)
    peers["llama_cpp_q8_0"] = (llama, llama.get("bytes_per_token"), True)
    out = {}
    for name, (result, read, int8) in peers.items():
        record = {"measure": "peer", "peer": name, **dims, "threads": threads, **result}
        if "tok_s" in result:
            record["bytes_per_token"] = read
            record["bandwidth_bytes_per_s"] = bandwidths[int8]
            record["bound_tok_s"] = bandwidths[int8] / read
            record["fraction_of_bound"] = result["tok_s"] / record["bound_tok_s"]
        out[name] = emit(record)
    return out


_GGUF: dict[tuple[int, int, int], Path] = {}  # (n_layer, d, vocab) -> the llama.cpp peer's model, for this run


def bench_llama_cpp(n_layer: int, d: int, threads: int, tokens: int) -> dict:
    """llama.cpp in a process of its own (bench/llama_cpp_peer.py): with its extra buffer types (repacked weights),
    and without them where that crashes."""
    import importlib.util

    missing = [name for name in ("llama_cpp", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        return {"missing": f"{' and '.join(missing)} not installed (pip install llama-cpp-python gguf)"}
    if (n_layer, d, VOCAB) not in _GGUF:  # written by the first call, read by the next (every thread count)
        folder = Path(tempfile.mkdtemp(prefix="gguf-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _GGUF[n_layer, d, VOCAB] = folder / "q8_0.gguf"
    model_file = _GGUF[n_layer, d, VOCAB]
    command = [sys.executable, str(Path(__file__).parent / "llama_cpp_peer.py"), "--layers", str(n_layer),
               "--width", str(d), "--vocab", str(VOCAB), "--threads", str(threads), "--tokens", str(tokens),
               "--model-file", str(model_file)]  # fmt: skip
    failures = []
    for extra in ([], ["--no-extra-buffers"]):
        done = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=1800)
        if done.returncode == 0:
            return {**json.loads(done.stdout.strip().splitlines()[-1]), "failed_first": failures}
        failures.append(f"{' '.join(extra) or 'default'}: exit {done.returncode} {done.stderr.strip()[-300:]}")
    return {"missing": "llama.cpp failed: " + "; ".join(failures)}


@torch.inference_mode()
def bench_generate(model, tokens: int) -> dict:
    """``model.generate()`` of the 8-bit model at batch 1 (the engine's int8 step) against that very step in a
    plain loop: what transformers' loop costs per token."""
    from spikegpt.runtime.step import generate_step

    prompt = torch.tensor([[1, 2, 3]])

    def run_generate(n: int) -> float:
        started = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - started

    run_generate(tokens)  # traces the step
    generate_tok_s = (tokens - 1) / (run_generate(tokens) - min(run_generate(1) for _ in range(3)))
    out = model(prompt, use_cache=True)
    step = generate_step(model, prompt[:, :1], out.state)
    box = {"state": out.state, "token": out.logits[:, -1:].argmax(-1)}

    def one():
        logits, box["state"], _ = step(box["token"], box["state"])
        box["token"] = logits.argmax(-1, keepdim=True)

    step_tok_s, _ = tokens_per_second(one, tokens)
    return {"generate_tok_s": generate_tok_s, "step_tok_s": step_tok_s, "generate_vs_step": generate_tok_s / step_tok_s,
            "loop_overhead_ms_per_token": 1e3 * (1 / generate_tok_s - 1 / step_tok_s)}  # fmt: skip


def steps_summary(records: list[dict], peers: dict) -> dict:
    """Per batch (b1, b16, ...): ``tok_s``, ``fraction_of_bound`` and ``vs_dense`` (over the dense step of the same
    weights) per mode and density, ``int8_event_vs_int8_dense`` per density, and at batch 1 ``vs_rwkv_package``
    (over the rwkv package's best strategy)."""
    rwkv = ("rwkv_package_fp32", "rwkv_package_fp32i8")
    best_peer = max((peers.get(p, {}).get("tok_s", 0.0) for p in rwkv), default=0.0)  # none with --no-peers
    table: dict = {}
    for r in records:
        row = table.setdefault(f"b{r['batch']}", {"tok_s": {}, "fraction_of_bound": {}, "vs_dense": {},
                                                  "int8_event_vs_int8_dense": {}, "vs_rwkv_package": {}})  # fmt: skip
        modes, density = r["modes"], r["density"]
        for mode, figures in modes.items():
            row["tok_s"].setdefault(mode, {})[density] = figures["net_tok_s"]
            row["fraction_of_bound"].setdefault(mode, {})[density] = figures["fraction_of_bound"]
            dense = "int8" if MODES[mode][0] else "fp32"
            if dense in modes:
                row["vs_dense"].setdefault(mode, {})[density] = figures["net_tok_s"] / modes[dense]["net_tok_s"]
            if r["batch"] == 1 and best_peer:
                row["vs_rwkv_package"].setdefault(mode, {})[density] = figures["net_tok_s"] / best_peer
        if "int8" in modes and "int8_sparse" in modes:
            row["int8_event_vs_int8_dense"][density] = modes["int8_sparse"]["net_tok_s"] / modes["int8"]["net_tok_s"]
    return table


def bench_placement(n_layer: int, d: int, args, dram_by_threads: dict[int, float]) -> dict:
    """Every record of one size under --placement, and its summary entry."""
    dims = {"n_layer": n_layer, "n_embd": d, "vocab": VOCAB}
    variants = Variants(n_layer, d, args.placement)
    entry = {"placement": args.placement, "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        bandwidths = bound_bandwidths(variants, dram_by_threads[threads])
        records = bench_steps(variants, dims, args, threads, bandwidths)
        on_cpu = DEVICE.type == "cpu"
        peers = bench_peers(variants, dims, args, threads, bandwidths) if on_cpu and args.peers else {}
        row = steps_summary(records, peers)
        row["bandwidth_gb_s"] = {"fp32": bandwidths[False] / 1e9, "int8": bandwidths[True] / 1e9}
        row["peers"] = {name: {k: p.get(k) for k in ("tok_s", "fraction_of_bound", "missing") if k in p}
                        for name, p in peers.items()}  # fmt: skip
        if on_cpu and args.generate:
            row["generate"] = emit({"measure": "generate", **dims, "threads": threads,
                                    **bench_generate(variants.int8, args.tokens)})  # fmt: skip
            best_peer = peers.get("rwkv_package_fp32", {}).get("tok_s")
            if best_peer:
                row["generate"]["vs_rwkv_package_fp32"] = row["generate"]["generate_tok_s"] / best_peer
        entry["threads"][str(threads)] = row
    return entry


def bench_forms(size: str, args, dram: float) -> dict:
    """Our eager, traced and compiled fp32 steps and the prompt prefill against the peers (without --placement)."""
    n_layer, d = (int(x) for x in size.lower().split("x"))
    dims = {"n_layer": n_layer, "n_embd": d, "vocab": VOCAB}
    decode, prefill = bench_ours(n_layer, d, args.tokens, args.prefill, args.forms)
    weight_bytes = decode["bytes_per_token"]
    bound = bandwidth(weight_bytes, dram) / weight_bytes
    hf = bench_hf(n_layer, d, args.tokens)
    pkg = bench_rwkv_package(n_layer, d, args.tokens)
    emit({"measure": "decode", "model": "spikegpt (ours)", **dims, **decode, "bound_tok_s": bound})
    emit({"measure": "decode", "model": "transformers RwkvForCausalLM", **dims, **hf})
    emit({"measure": "decode", "model": "rwkv package cpu fp32", **dims, **pkg})
    emit({"measure": "prefill", "model": "spikegpt (ours)", **dims, **prefill})
    row = {"bound_tok_s": bound, "hf_tok_s": hf.get("tok_s"), "rwkv_package_tok_s": pkg.get("tok_s")}
    for form in args.forms:
        ours_tok_s = decode[f"{form}_tok_s"]
        row[form] = {
            "tok_s": ours_tok_s,
            "fraction_of_bound": ours_tok_s / bound,
            "vs_hf": ours_tok_s / hf["tok_s"],
            "vs_rwkv_package": ours_tok_s / pkg["tok_s"] if "tok_s" in pkg else None,
        }
    row["prefill_speedup"] = prefill["speedup"]
    return row


QUICK = {"sizes": ["2x64"], "vocab": 512, "tokens": 3, "warmup": 1, "densities": ["0.25"], "batches": [1, 2],
         "threads": [1], "prefill": 16, "forms": ["eager", "traced"]}  # fmt: skip


def main() -> None:
    global DEVICE, VOCAB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="LxD",
        help="model sizes as layers x width (default: 6x256 12x512; with --placement 6x256 12x512 12x768)",
    )
    parser.add_argument("--vocab", type=int, default=VOCAB, help=f"vocabulary (default: {VOCAB})")
    parser.add_argument("--tokens", type=int, default=48, help="decoding steps timed per model (default: 48)")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill test (default: 512)")
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=None,
        help="torch threads: each count in turn with --placement (default: 1 2), one count otherwise (default: "
        "torch's choice)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of our model, with --placement (default: cpu); the peers and the forms run on a CPU only",
    )
    parser.add_argument(
        "--placement",
        choices=["residual", "inputs"],
        default=None,
        help="time decoding steps of this spike placement (fp32, int8 and int8 event-driven products; batch 1 and "
        "16; 1 and 2 threads; measured and synthetic input densities) against the peers (the rwkv package's fp32 "
        "and fp32i8, transformers' RWKV, llama.cpp at Q8_0), instead of the forms and prefill (default: off)",
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed steps before timing, with --placement (default: 4)"
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="with --placement (default: 1 16)")
    parser.add_argument(
        "--densities",
        nargs="+",
        default=["bundled", "0.05", "0.1", "0.25", "0.5"],
        help="with --placement: fractions of active inputs; 'measured' = the random-weight model's inputs as they "
        "are, 'bundled' = per kind of product as measured on the bundled model of the placement (inputs: the "
        "frontier's shipped spike-driven model), 'binary' = as measured on the binary-spike study run (inputs only), "
        "a path to a frontier row JSON = as measured on that model (default: bundled 0.05 0.1 0.25 0.5)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=None,
        choices=list(MODES),
        help="with --placement: the decoding steps to time: fp32 or int8 weights, with dense products, every "
        "candidate event-driven (_sparse) or the crossover's choice (_auto) (default on a CPU: "
        f"{' '.join(CPU_MODES)}; on CUDA: {' '.join(GPU_MODES)})",
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="with --placement: skip the peers")
    parser.add_argument(
        "--no-generate",
        dest="generate",
        action="store_false",
        help="with --placement: skip timing model.generate() against its step",
    )
    parser.add_argument(
        "--forms",
        nargs="*",
        default=None,
        choices=["eager", "traced", "compiled"],
        help="our decoding steps to time: the eager forward, the engine's traced step (its CPU "
        "default), torch.compile (engine --compile; compiling takes ~30 s per size) (default: all, none with "
        "--placement)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model (2x64, vocabulary 512), a few tokens, one density, one thread: checks that everything "
        "runs (its figures mean nothing)",
    )
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value if key != "forms" or not args.placement else [])
    DEVICE, VOCAB = torch.device(args.device), args.vocab
    if DEVICE.type != "cpu" and (args.forms or not args.placement):
        parser.error("--device other than cpu needs --placement (the forms and prefill are timed on a CPU)")
    if args.forms is None:
        args.forms = [] if args.placement else ["eager", "traced", "compiled"]
    if args.sizes is None:
        args.sizes = ["6x256", "12x512", "12x768"] if args.placement else ["6x256", "12x512"]
    if args.modes is None:
        args.modes = CPU_MODES if DEVICE.type == "cpu" else GPU_MODES
    if args.threads is None:
        args.threads = [1, 2] if args.placement else [torch.get_num_threads()]
    if not args.placement and len(args.threads) > 1:
        parser.error("--threads takes one count without --placement")
    from spikegpt.runtime.products import machine_id

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    emit({"measure": "run", "machine": machine_id(DEVICE), "args": vars(args),
          "meta": {"run": {"time": started, "torch": torch.__version__}}})  # fmt: skip
    dram = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        dram[threads] = copy_bandwidth()
        emit({"measure": "copy_bandwidth", "megabytes": 512, "bytes_per_s": dram[threads], "threads": threads})
    summary = {"measure": "summary", "copy_bandwidth_gb_s": {str(t): b / 1e9 for t, b in dram.items()}, "sizes": {}}
    for size in args.sizes:
        if args.placement:
            n_layer, d = (int(x) for x in size.lower().split("x"))
            summary["sizes"][size] = bench_placement(n_layer, d, args, dram)
        else:
            summary["sizes"][size] = bench_forms(size, args, dram[args.threads[0]])
    emit(summary)


if __name__ == "__main__":
    main()
