"""Training throughput on a CPU, fp32: SpikeGPT against transformers' RwkvForCausalLM of the same dimensions.

One training step = forward over a [batch, ctx] block, cross-entropy on the next tokens, backward, AdamW step.
Measured in the same run, interleaved (ours, peer, ours, peer, ...) so that load from other processes falls on
both alike:
  - ``spikegpt``: our model as ``spikegpt train`` runs it (chunked WKV and LIF references on a CPU);
  - ``hf-rwkv``: transformers' RwkvForCausalLM (its CPU path: a Python loop over tokens in every layer);
  - ``spikegpt-stub-kernels``: our model with WKV and LIF replaced by elementwise stand-ins of the same shapes,
    so ``1 - spikegpt / stub`` in step time is the share of the step the two kernels take (forward and backward);
  - the bound: 6 FLOPs per parameter per token (forward + backward matmuls) at the matmul rate measured in this run
    on the model's own projection shape.

Prints one JSON object per measurement, then a summary with the ratios.
    python bench/train.py                               # L=6, D=256, ctx 256, batch 8, vocab 256
    python bench/train.py --layers 12 --width 512 --vocab 50277 --steps 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from common import emit


def spikegpt_model(args):
    from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

    config = SpikeGPTConfig(
        vocab_size=args.vocab, n_layer=args.layers, n_embd=args.width, ctx_len=args.ctx, dropout=0.0
    )
    return SpikeGPTForCausalLM(config)


def hf_rwkv_model(args):
    from transformers import RwkvConfig, RwkvForCausalLM

    config = RwkvConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        num_hidden_layers=args.layers,
        attention_hidden_size=args.width,
        intermediate_size=4 * args.width,
        context_length=args.ctx,
    )
    return RwkvForCausalLM(config)


@contextmanager
def stub_kernels():
    """WKV and LIF replaced by elementwise stand-ins with the same inputs, outputs and gradients' shapes."""
    import spikegpt.modeling.model
    import spikegpt.modeling.neuron

    def wkv(w, u, k, v, state, mask=None):
        y = torch.sigmoid(k + u) * v
        if state is None:
            state = tuple(torch.zeros(k.shape[0], k.shape[2]) for _ in range(3))
        return y, state

    def lif(x, v0, params, return_counts=False, mask=None):
        spikes = x + ((x >= params.threshold).to(x.dtype) - x).detach()  # straight-through
        counts = spikes.detach().sum(dim=1)
        return spikes, torch.zeros(x.shape[0], x.shape[2]), counts

    saved = spikegpt.modeling.model.wkv, spikegpt.modeling.neuron.lif
    spikegpt.modeling.model.wkv, spikegpt.modeling.neuron.lif = wkv, lif
    try:
        yield
    finally:
        spikegpt.modeling.model.wkv, spikegpt.modeling.neuron.lif = saved


def step_fn(model, ids, hf: bool = False, context=nullcontext):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        inputs, targets = ids[:, :-1], ids[:, 1:]
        with context():
            logits = model(inputs, use_cache=False).logits if hf else model(inputs).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_flops_per_s(rows: int, width: int, repeats: int = 5) -> float:
    a, b = torch.randn(rows, width), torch.randn(width, 4 * width)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * rows * width * 4 * width / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6, help="blocks (default: 6)")
    parser.add_argument("--width", type=int, default=256, help="width (default: 256)")
    parser.add_argument("--ctx", type=int, default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument(
        "--vocab",
        type=int,
        default=256,
        help="vocabulary (default: 256, byte-sized, so that the step measures the blocks, where the two models "
        "differ; the head is the same in both)",
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model (default: 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ids = torch.randint(0, args.vocab, (args.batch, args.ctx + 1))
    tokens = args.batch * args.ctx

    ours = spikegpt_model(args)
    peer = hf_rwkv_model(args)
    runs = {
        "spikegpt": step_fn(ours, ids),
        "hf-rwkv": step_fn(peer, ids, hf=True),
        "spikegpt-stub-kernels": step_fn(spikegpt_model(args), ids, context=stub_kernels),
    }
    for step in runs.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):  # interleaved
        for name, step in runs.items():
            times[name].append(timed(step))
    params = {
        name: sum(p.numel() for p in model.parameters()) for name, model in (("spikegpt", ours), ("hf-rwkv", peer))
    }
    shape = dict(layers=args.layers, width=args.width, ctx=args.ctx, batch=args.batch, vocab=args.vocab)
    tps = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        tps[name] = tokens / median
        emit({"bench": "train", "impl": name, **shape, "threads": torch.get_num_threads(),
              "step_s_median": median, "step_s": samples, "tokens_per_s": tps[name],
              "parameters": params.get(name, params["spikegpt"])})  # fmt: skip
    flops = matmul_flops_per_s(tokens, args.width)
    bound = flops / (6 * params["spikegpt"])
    emit({"bench": "train", "impl": "bound", **shape, "matmul_gflops": flops / 1e9, "tokens_per_s": bound})
    kernel_share = 1 - tps["spikegpt"] / tps["spikegpt-stub-kernels"]
    emit({
        "bench": "train", "summary": True, **shape,
        "spikegpt_tokens_per_s": tps["spikegpt"], "hf_rwkv_tokens_per_s": tps["hf-rwkv"],
        "speedup_vs_hf_rwkv": tps["spikegpt"] / tps["hf-rwkv"],
        "wkv_lif_share_of_step": kernel_share, "fraction_of_bound": tps["spikegpt"] / bound,
    })  # fmt: skip


if __name__ == "__main__":
    main()
