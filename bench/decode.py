"""Batch-1 decoding and prompt prefill on a CPU, fp32, random weights: our recurrent form against the peers.

Peers, measured in the same run at the same dimensions (vocabulary 50277, FFN 4·d):
  - transformers' RwkvForCausalLM (its recurrent path with ``state``);
  - the ChatRWKV ``rwkv`` package (``pip install spikegpt[bench]``), strategy ``cpu fp32``, on an RWKV-4 checkpoint
    of random weights written to a temporary file.
The bound: batch-1 decoding must read every weight once per token, so tokens/s ≤ copy bandwidth ÷ parameter bytes
read per token (the embedding contributes one row), with the copy bandwidth (bytes read + written per second by
``Tensor.copy_``) measured in this run, both for a 512 MB buffer (main memory) and for a buffer the size of the
weights (a small model's weights can live in a large last-level cache; the faster of the two is the bound).
Ours is timed three ways (``--forms``): the model's forward, the serving engine's traced step, torch.compile.
Prefill: tokens/s of our parallel form over a 512-token prompt against feeding the same prompt token by token.

Event-driven decoding (``--placement residual|inputs``): the engine's traced step with dense, sparse and auto
products (``--decode`` of generate and serve) at batch 1 and 16, at the inputs' own sparsity ("measured") and at
synthetic fractions of active inputs (each row keeps its largest |x| only, so the active set moves with the data as
real activations do, independently per row: a batch's union fills in). ``residual``: the placement as published,
whose channel-mix V reads relu(k)²; ``inputs``: every block's projection reads spike counts (the spike-driven
placement, counts up to 4 as in the bundled driven model). The head reads ``ln_out``'s output in both and stays
dense. Densities: ``measured`` = the random-weight model's inputs as they are; ``bundled`` = each product's zero
fraction measured on the bundled model of the placement over held-out Tiny Shakespeare (``bench/driven_study.py``,
read from ``bench/results/driven-study.json``; per kind of product, averaged over its layers); ``binary`` = the same
for the binary-spike run of that study (``inputs`` only); a number = that fraction active in every product. Each
record has the bound recomputed from the bytes the step actually reads (every weight of a dense product, the
active rows of an event-driven one: the batch's union, each row read once) and the densities measured on the
products' inputs during the run. The summary has ``sparse_vs_dense`` (and ``auto_vs_dense``) per size, batch and
density, and the ratio to the rwkv package at batch 1.

Prints one JSON object per measurement, then a summary object with the ratios.
    python bench/decode.py                       # both sizes
    python bench/decode.py --sizes 6x256 --tokens 64
    python bench/decode.py --placement residual  # event-driven decoding at 6x256, 12x512, 12x768
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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


def bytes_per_token(model: torch.nn.Module, embedding: torch.Tensor) -> int:
    """Parameter bytes a batch-1 step reads: every parameter but the embedding table, plus one embedding row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - embedding.numel() * embedding.element_size() + embedding.shape[1] * embedding.element_size()


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
    decode = {"bytes_per_token": bytes_per_token(model, model.model.emb.weight)}
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


@torch.inference_mode()
def bench_rwkv_package(n_layer: int, d: int, tokens: int) -> dict:
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    try:
        from rwkv.model import RWKV
    except ImportError:
        return {"missing": "the rwkv package is not installed (pip install spikegpt[bench])"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rwkv4.pth"
        rwkv4_checkpoint(path, n_layer, d)
        model = RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    _, state = model.forward([1, 2, 3], None)
    box = {"state": state, "token": 4}

    def step():
        logits, box["state"] = model.forward([box["token"]], box["state"])
        box["token"] = int(logits.argmax())

    median, best = tokens_per_second(step, tokens)
    return {"tok_s": median, "best_tok_s": best}


# -- event-driven decoding ------------------------------------------------------------------------------------


STUDY = Path(__file__).parent / "results" / "driven-study.json"
# the study names its models by their path in the repository; the bundled spiking models in BUNDLED_MODELS' order
BUNDLED = dict(zip(("residual", "inputs"), (f"spikegpt/assets/{name}" for name in BUNDLED_MODELS[:2]), strict=True))


def placement_model(n_layer: int, d: int, placement: str):
    if placement == "inputs":
        return ours(n_layer, d, spike_placement="inputs", input_spikes="counts", spike_count_max=4)
    return ours(n_layer, d)


def product_kind(name: str) -> str:
    """'blocks.3.ffn.value' → 'ffn.value': what a product is, whatever its layer."""
    return re.sub(r"^.*blocks\.\d+\.", "", name)


def study_densities(label: str, placement: str) -> tuple[dict[str, float], str]:
    """Active-input fraction per kind of product measured by the driven study on the model ``label`` names
    ('bundled': the bundled model of ``placement``; 'binary': the binary-spike run), and where it came from."""
    models = json.loads(STUDY.read_text())["models"]
    if label == "bundled":
        found = [m for m in models if m["model"] == BUNDLED[placement]]
    else:
        found = [m for m in models if m.get("input_spikes") == "binary" and placement == "inputs"]
    if not found:
        raise SystemExit(f"{STUDY}: no {label!r} model for the {placement} placement")
    kinds: dict[str, list[float]] = {}
    for name, measured in found[0]["inputs"].items():
        kinds.setdefault(product_kind(name), []).append(1 - measured["zero_fraction"])
    return {kind: sum(v) / len(v) for kind, v in kinds.items()}, f"{STUDY.name}: {found[0]['name']}"


def synthetic_inputs(named: dict, density) -> list:
    """Forward pre-hooks giving each product's input exactly a fraction of nonzero values: per row, the largest
    |x|; where a row has fewer nonzeros than that (random weights fire at their own rate), kept zeros become spike
    counts of 1. ``density``: one fraction for every product, a fraction per kind of product, or None (left as
    they are)."""

    def hook(module, args, fraction):
        (x,) = args
        keep = max(1, int(fraction * int(x.shape[-1]) + 0.5))
        mask = torch.zeros_like(x).scatter_(-1, x.abs().topk(keep, dim=-1).indices, 1.0)
        return (mask * torch.where(x != 0, x, torch.ones_like(x)),)

    hooks = []
    for name, module in named.items():
        fraction = density.get(product_kind(name)) if isinstance(density, dict) else density
        if fraction is not None:
            hooks.append(module.register_forward_pre_hook(lambda m, a, f=fraction: hook(m, a, f)))
    return hooks


def input_densities(model, modules, batch: int, steps: int = 4) -> dict:
    """Mean fraction of nonzero inputs per row and of the batch's union, over the candidate products, weighted
    by their weight bytes, measured over a few eager steps of ``batch`` rows."""
    seen = {m: [0.0, 0.0, 0] for m in modules}

    def record(module, args):
        flat = args[0].reshape(-1, args[0].shape[-1])
        seen[module][0] += float(flat.ne(0).float().mean())
        seen[module][1] += float(flat.ne(0).any(0).float().mean())
        seen[module][2] += 1

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    state, token = model.fresh_state(batch), torch.randint(0, VOCAB, (batch, 1), device=DEVICE)
    for _ in range(steps):
        out = model(token, state=state)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    for h in hooks:
        h.remove()
    weights = {m: m.weight.numel() * m.weight.element_size() for m in modules}
    total = sum(weights.values())
    row = sum(weights[m] * v[0] / v[2] for m, v in seen.items()) / total
    union = sum(weights[m] * v[1] / v[2] for m, v in seen.items()) / total
    return {"row": row, "union": union, "candidate_bytes": total}


def at_size_bandwidth(weight_bytes: int) -> float:
    """The weights may fit in a large last-level cache: copying a buffer of their size measures that level."""
    at_size = copy_bandwidth(megabytes=max(1, weight_bytes // 2**20))
    emit({"measure": "copy_bandwidth", "megabytes": weight_bytes // 2**20, "bytes_per_s": at_size})
    return at_size


def decode_run(model, mode: str, batch: int, crossovers):
    """One decoding step of ``batch`` rows per call: the engine's traced step with ``mode``'s products."""
    from spikegpt.runtime.products import DecodeProducts
    from spikegpt.runtime.step import trace_decode_step

    tokens = torch.randint(0, VOCAB, (batch, 1), device=DEVICE)
    step = trace_decode_step(model, tokens, model.fresh_state(batch), DecodeProducts(model, mode, batch, crossovers))
    box = {"state": model.fresh_state(batch), "token": tokens}

    def run():
        logits, box["state"], _ = step(box["token"], box["state"])
        box["token"] = logits.argmax(-1, keepdim=True)

    return run


@torch.inference_mode()
def bench_sparse(n_layer: int, d: int, args, dram: float) -> tuple[list[dict], float, int]:
    """Event-driven decoding records, the bound's bandwidth and the dense step's weight bytes."""
    from spikegpt.runtime.products import Crossovers, sparse_candidates

    model = placement_model(n_layer, d, args.placement)
    candidates = sparse_candidates(model)
    names = {module: name for name, module in model.named_modules()}
    crossovers = Crossovers.load(DEVICE)
    dense_bytes = bytes_per_token(model, model.model.emb.weight)
    bandwidth = max(dram, at_size_bandwidth(dense_bytes))
    records = []
    plain = {batch: decode_run(model, "dense", batch, crossovers) for batch in args.batches}  # traced before hooks
    for label in args.densities:
        source = "this model's inputs" if label in ("measured",) else "synthetic"
        if label in ("bundled", "binary"):
            density, source = study_densities(label, args.placement)
        else:
            density = None if label == "measured" else float(label)
        hooks = synthetic_inputs({names[m]: m for m in candidates}, density)
        for batch in args.batches:
            measured = input_densities(model, candidates, batch)
            read = {
                "dense": dense_bytes,
                # each active row once per step (the union), as the event-driven products read them
                "sparse": dense_bytes - measured["candidate_bytes"] * (1 - measured["union"]),
            }
            record = {
                "measure": "event_driven_decode",
                "placement": args.placement,
                "density_source": source,
                "n_layer": n_layer,
                "n_embd": d,
                "vocab": VOCAB,
                "batch": batch,
                "density": label,
                "row_density": measured["row"],
                "union_density": measured["union"],
                "crossover_source": crossovers.source,
            }
            runs = {mode: decode_run(model, mode, batch, crossovers) for mode in args.decode}
            if hooks:
                runs["dense_plain"] = plain[batch]
            timed = interleaved_steps_per_second(runs, args.tokens, args.warmup)
            for mode, (steps_s, best_steps_s) in timed.items():
                if mode == "dense_plain":
                    continue
                record[f"{mode}_tok_s"] = steps_s * batch
                record[f"{mode}_best_tok_s"] = best_steps_s * batch
                bytes_read = read["dense" if mode == "dense" else "sparse"]
                record[f"{mode}_bytes_per_step"] = bytes_read
                record[f"{mode}_bound_tok_s"] = bandwidth / bytes_read * batch
            # The synthetic inputs are made inside the traced step (top-k per product), at the same cost in every
            # mode: the dense step with and without them measures it, and the net ratios leave it out.
            synthesis_s = 0.0
            if hooks and "dense" in timed:
                synthesis_s = max(0.0, 1 / timed["dense"][0] - 1 / timed["dense_plain"][0])
            record["input_synthesis_s_per_step"] = synthesis_s
            for mode in ("dense", "sparse", "auto"):
                if mode in timed:
                    record[f"{mode}_net_tok_s"] = batch / max(1e-9, 1 / timed[mode][0] - synthesis_s)
            for mode in ("sparse", "auto"):
                if mode in timed and "dense" in timed:
                    record[f"{mode}_vs_dense_net"] = record[f"{mode}_net_tok_s"] / record["dense_net_tok_s"]
            emit(record)
            records.append(record)
        for h in hooks:
            h.remove()
    return records, bandwidth, dense_bytes


def sparse_summary(records: list[dict], peers: dict) -> dict:
    table = {}
    for r in records:
        keys = ("sparse_vs_dense", "auto_vs_dense", "sparse_vs_dense_best", "auto_vs_dense_best",
                "sparse_vs_dense_net", "auto_vs_dense_net", "vs_rwkv_package")  # fmt: skip
        row = table.setdefault(f"b{r['batch']}", {key: {} for key in keys})
        for mode in ("sparse", "auto"):
            if f"{mode}_tok_s" in r and "dense_tok_s" in r:
                row[f"{mode}_vs_dense"][r["density"]] = r[f"{mode}_tok_s"] / r["dense_tok_s"]
                row[f"{mode}_vs_dense_best"][r["density"]] = r[f"{mode}_best_tok_s"] / r["dense_best_tok_s"]
                row[f"{mode}_vs_dense_net"][r["density"]] = r[f"{mode}_vs_dense_net"]
        best = max(r.get(f"{m}_tok_s", 0.0) for m in ("sparse", "auto"))
        if r["batch"] == 1 and peers.get("rwkv_package_tok_s"):
            row["vs_rwkv_package"][r["density"]] = best / peers["rwkv_package_tok_s"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["6x256", "12x512"],
        metavar="LxD",
        help="model sizes as layers x width (default: 6x256 12x512)",
    )
    parser.add_argument("--tokens", type=int, default=48, help="decoding steps timed per model (default: 48)")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill test (default: 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of our model, with --placement (default: cpu); the peers and the forms run on a CPU only",
    )
    parser.add_argument(
        "--placement",
        choices=["residual", "inputs"],
        default=None,
        help="time event-driven decoding for this spike placement (dense, sparse and auto products; batch 1 and "
        "16; measured and synthetic input densities) instead of the forms and prefill (default: off)",
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed steps before timing, with --placement (default: 4)"
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="with --placement (default: 1 16)")
    parser.add_argument(
        "--densities",
        nargs="+",
        default=["bundled", "0.1", "0.2", "0.4"],
        help="with --placement: fractions of active inputs; 'measured' = the random-weight model's inputs as they "
        "are, 'bundled' = per product as measured on the bundled model of the placement, 'binary' = as measured on "
        "the binary-spike study run (inputs only) (default: bundled 0.1 0.2 0.4)",
    )
    parser.add_argument(
        "--decode",
        nargs="+",
        default=["dense", "sparse", "auto"],
        choices=["dense", "sparse", "auto"],
        help="with --placement: the decoding step's products to time (default: all)",
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
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type != "cpu" and (args.forms or not args.placement):
        parser.error("--device other than cpu needs --placement (the forms and prefill are timed on a CPU)")
    if args.forms is None:
        args.forms = [] if args.placement else ["eager", "traced", "compiled"]
    if args.placement and args.sizes == parser.get_default("sizes"):
        args.sizes = ["6x256", "12x512", "12x768"]
    if args.threads:
        torch.set_num_threads(args.threads)
    dram = copy_bandwidth()
    emit({"measure": "copy_bandwidth", "megabytes": 512, "bytes_per_s": dram, "threads": torch.get_num_threads()})
    summary = {"measure": "summary", "copy_bandwidth_gb_s": dram / 1e9, "sizes": {}}
    for size in args.sizes:
        n_layer, d = (int(x) for x in size.lower().split("x"))
        dims = {"n_layer": n_layer, "n_embd": d, "vocab": VOCAB}
        row = {}
        if args.forms:
            decode, prefill = bench_ours(n_layer, d, args.tokens, args.prefill, args.forms)
            weight_bytes = decode["bytes_per_token"]
        else:
            weight_bytes = None
        sparse_records, bound_bandwidth = [], dram
        if args.placement:
            sparse_records, bound_bandwidth, weight_bytes = bench_sparse(n_layer, d, args, dram)
        else:
            bound_bandwidth = max(dram, at_size_bandwidth(weight_bytes))
        bound = bound_bandwidth / weight_bytes
        on_cpu = DEVICE.type == "cpu"
        gpu_note = {"missing": f"peers run on a CPU only (ours ran on {DEVICE})"}
        hf = bench_hf(n_layer, d, args.tokens) if on_cpu else gpu_note
        pkg = bench_rwkv_package(n_layer, d, args.tokens) if on_cpu else gpu_note
        if args.forms:
            emit({"measure": "decode", "model": "spikegpt (ours)", **dims, **decode, "bound_tok_s": bound})
        emit({"measure": "decode", "model": "transformers RwkvForCausalLM", **dims, **hf})
        emit({"measure": "decode", "model": "rwkv package cpu fp32", **dims, **pkg})
        row.update({"bound_tok_s": bound, "hf_tok_s": hf.get("tok_s"), "rwkv_package_tok_s": pkg.get("tok_s")})
        if args.forms:
            emit({"measure": "prefill", "model": "spikegpt (ours)", **dims, **prefill})
            for form in args.forms:
                ours_tok_s = decode[f"{form}_tok_s"]
                row[form] = {
                    "tok_s": ours_tok_s,
                    "fraction_of_bound": ours_tok_s / bound,
                    "vs_hf": ours_tok_s / hf["tok_s"],
                    "vs_rwkv_package": ours_tok_s / pkg["tok_s"] if "tok_s" in pkg else None,
                }
            row["prefill_speedup"] = prefill["speedup"]
        if args.placement:
            row["placement"] = args.placement
            row.update(sparse_summary(sparse_records, row))
        summary["sizes"][size] = row
    emit(summary)


if __name__ == "__main__":
    main()
