"""Batch-1 decoding on a CPU with 8-bit weights against the fp32 traced step, and the bound recomputed for the
bytes each step reads.

The model: random weights at the given sizes (as bench/decode.py, vocabulary 50277, FFN 4·d), quantized to the
8-bit grid (per-output-channel scales). Timed, each as the serving engine runs it on a CPU (the step traced with
torch.jit.trace):
  - fp32: the float model (the peer: what the engine ran before);
  - int8 dynamic: every product through torch.ao's quantized::linear_dynamic (fbgemm; int8 weights, the input
    quantized per call) — the engine's choice for an 8-bit model;
  - int8 weight-only: torch._weight_int8pack_mm (int8 weights, fp32 inputs).
Single products (the head, an FFN key) are timed the same three ways. The bound: tokens/s <= copy bandwidth /
bytes of weights read per token (fp32: 4 bytes a weight; int8: 1 byte a weight + a 4-byte scale per output
channel; vectors and one embedding row at their stored size), with the copy bandwidth measured in this run for
main memory and for a buffer the size of the weights.

    python bench/int8_decode.py --threads 1            # 12 x 512
    python bench/int8_decode.py --sizes 6x256 12x512
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from common import emit
from decode import copy_bandwidth, ours, tokens_per_second

from spikegpt.quant.grids import quantize_model_, quantized_linears
from spikegpt.quant.int8 import INT8_KERNELS
from spikegpt.runtime.products import decode_products
from spikegpt.runtime.step import trace_decode_step


def weight_bytes(model, int8: bool) -> int:
    """Bytes of parameters a batch-1 step reads: every product weight (int8: 1 byte + a scale per row), every other
    parameter but the embedding table, one embedding row."""
    linear_weights = {id(linear.weight) for _, linear in quantized_linears(model)}
    total = 0
    for p in model.parameters():
        if id(p) in linear_weights and int8:
            total += p.numel() + 4 * p.shape[0]
        elif p is not model.model.emb.weight:
            total += p.numel() * p.element_size()
    return total + model.model.emb.weight.shape[1] * 4


@torch.inference_mode()
def time_step(model, tokens: int) -> tuple[float, float]:
    token = torch.tensor([[4]])
    step_fn = trace_decode_step(model, token, model.fresh_state(1))
    box = {"state": model(torch.tensor([[1, 2, 3]]), use_cache=True).state, "token": token}

    def step():
        logits, box["state"], _ = step_fn(box["token"], box["state"])
        box["token"] = logits.argmax(-1, keepdim=True)

    return tokens_per_second(step, tokens)


@torch.inference_mode()
def time_products(fp32_model, int8_models: dict) -> list[dict]:
    rows = []
    for label, get in (("head", lambda m: m.head), ("ffn.key", lambda m: m.model.blocks[0].ffn.key)):
        fp32 = get(fp32_model)
        x = torch.randn(1, fp32.in_features)
        record = {"measure": "product", "name": label, "shape": list(fp32.weight.shape)}
        record["fp32_ms"] = 1e3 / tokens_per_second(lambda fp32=fp32, x=x: fp32(x), 50)[0]
        for kernel, model in int8_models.items():
            linear = get(model)
            record[f"int8_{kernel}_ms"] = 1e3 / tokens_per_second(lambda linear=linear, x=x: linear(x), 50)[0]
        rows.append(record)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", nargs="+", default=["12x512"], metavar="LxD", help="layers x width (default: 12x512)"
    )
    parser.add_argument("--tokens", type=int, default=48, help="decoding steps timed per form (default: 48)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    dram = copy_bandwidth()
    emit({"measure": "copy_bandwidth", "megabytes": 512, "bytes_per_s": dram, "threads": torch.get_num_threads()})
    summary = {"measure": "summary", "threads": torch.get_num_threads(), "sizes": {}}
    for size in args.sizes:
        n_layer, d = (int(x) for x in size.lower().split("x"))
        fp32 = ours(n_layer, d)
        grid = quantize_model_(copy.deepcopy(fp32), 8)
        int8 = {}
        for kernel in INT8_KERNELS:
            int8[kernel] = copy.deepcopy(grid)
            decode_products(int8[kernel], "dense", int8=kernel).install()  # for good: the model is the bench's
        row, bandwidth_at = {}, {}
        for label, model, is_int8 in [("fp32", fp32, False)] + [(f"int8_{k}", m, True) for k, m in int8.items()]:
            started = time.perf_counter()
            median, best = time_step(model, args.tokens)
            nbytes = weight_bytes(model, is_int8)
            megabytes = max(1, nbytes // 2**20)
            if megabytes not in bandwidth_at:  # one measurement per size: both int8 forms share their bound
                bandwidth_at[megabytes] = copy_bandwidth(megabytes=megabytes)
            at_size = bandwidth_at[megabytes]
            bound = max(dram, at_size) / nbytes
            record = {"measure": "decode", "form": label, "n_layer": n_layer, "n_embd": d, "tok_s": median,
                      "best_tok_s": best, "bytes_per_token": nbytes, "copy_bandwidth_at_size": at_size,
                      "bound_tok_s": bound, "fraction_of_bound": median / bound,
                      "wall_s": time.perf_counter() - started}  # fmt: skip
            emit(record)
            row[label] = {"tok_s": median, "bound_tok_s": bound, "fraction_of_bound": median / bound}
        for record in time_products(fp32, int8):
            emit({**record, "size": size})
        for label in row:
            row[label]["vs_fp32_traced"] = row[label]["tok_s"] / row["fp32"]["tok_s"]
        summary["sizes"][size] = row
    emit(summary)


if __name__ == "__main__":
    main()
