"""The products of 8-bit decoding on a CPU, one at a time: our int8 kernels against fp32 and torch's own int8
kernels, each against the memory bandwidth, per product shape.

For each product shape of the given sizes (d→d, d→4d, 4d→d and the d→vocabulary head), batch size and thread count:
  - fp32: ``F.linear`` of an input-major fp32 weight (the engine's layout on a CPU);
  - int8: ``spikegpt.kernels.int8_linear`` (real-valued rows quantized per row; the head's and the residual
    placement's products) and with spike counts (the spike-driven placement's);
  - int8 event-driven: ``int8_sparse_linear`` on spike counts with 5%, 10%, 25% and 50% of the inputs active;
  - the peers: torch.ao's dynamic int8 kernel (``quantized::linear_dynamic``, fbgemm: int8 weights, the input
    quantized per call) and ``torch._weight_int8pack_mm`` (int8 weights, fp32 inputs).
Every call reads a different copy of its weights, cycling through copies larger than the last-level cache
(``--working-set-mb``), as in a decoding step, where a weight was last read a token ago. Each record has the time,
the weight bytes read (int8: a byte a weight and a 4-byte scale per output; event-driven: the active rows of the
batch's union) and the read rate against the copy bandwidth measured in the same run at that thread count (bytes
read + written per second: a read-only stream can go faster, so a fraction above 1 is possible).

    python bench/int8_decode.py                        # 12 x 768 shapes, batch 1 and 16, 1 and 2 threads
    python bench/int8_decode.py --sizes 6x256 --threads 1 --batches 1
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import warnings

import torch
import torch.nn.functional as F
from common import emit
from crossover import best_seconds, product_shapes
from decode import copy_bandwidth

from spikegpt.kernels import int8_linear, int8_sparse_linear
from spikegpt.runtime.products import machine_id

EVENT_DENSITIES = (0.05, 0.1, 0.25, 0.5)


class Weights:
    """Copies of one product's weights in every form the products read, cycled through ``working_set`` bytes."""

    def __init__(self, n_in: int, n_out: int, working_set: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        codes = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8, generator=g)
        self.scales = torch.rand(n_out, generator=g) / 100 + 1e-4
        copies = max(1, -(-working_set // (6 * codes.numel())))  # fp32 + two int8 layouts per copy
        self.copies = []
        for _ in range(copies):
            codes = codes.clone()
            fp32 = (codes.float() * self.scales[:, None]).t().contiguous().t()
            qweight = torch._make_per_channel_quantized_tensor(
                codes, self.scales.double(), torch.zeros(n_out, dtype=torch.long), 0
            )
            self.copies.append({
                "fp32": fp32, "codes": codes, "codes_t": codes.t().contiguous(),
                "packed": torch.ops.quantized.linear_prepack(qweight, None),
            })  # fmt: skip
        self.cycle = itertools.cycle(self.copies)

    def next(self) -> dict:
        return next(self.cycle)


def products(weights: Weights, x: torch.Tensor, counts_at: dict[float, torch.Tensor]) -> dict:
    """name → (call, fraction of the int8 rows read; None for the fp32 weight)."""
    s = weights.scales
    ones = counts_at[1.0]
    runs = {
        "fp32": (lambda: F.linear(x, weights.next()["fp32"]), None),
        "int8": (lambda: int8_linear(x, weights.next()["codes"], s), 1.0),
        "int8_counts": (lambda: int8_linear(ones, weights.next()["codes"], s, True), 1.0),
        "torch_linear_dynamic": (lambda: _linear_dynamic(x, weights.next()["packed"]), 1.0),
        "torch_weight_int8pack_mm": (lambda: torch._weight_int8pack_mm(x, weights.next()["codes"], s), 1.0),
    }
    for density, c in counts_at.items():
        if density < 1.0:
            union = float(c.ne(0).any(0).float().mean())
            runs[f"int8_event_{density:g}"] = (
                lambda c=c: int8_sparse_linear(c, weights.next()["codes_t"], s, True), union
            )
    return runs


def _linear_dynamic(x: torch.Tensor, packed) -> torch.Tensor:
    """torch's dynamic int8 kernel, one row per call (a per-tensor input scale over a batch would make a row's
    result depend on the others)."""
    return torch.cat([torch.ops.quantized.linear_dynamic(row, packed, True) for row in x.split(1)])


@torch.inference_mode()
def measure(n_in: int, n_out: int, batch: int, args, bandwidth: float) -> dict:
    g = torch.Generator().manual_seed(7 * n_in + n_out)
    weights = Weights(n_in, n_out, args.working_set_mb * 2**20, seed=n_in + n_out)
    x = torch.randn(batch, n_in, generator=g)
    counts_at = {
        p: (torch.randint(1, 4, (batch, n_in), generator=g) * (torch.rand(batch, n_in, generator=g) < p)).float()
        for p in (*EVENT_DENSITIES, 1.0)
    }
    record = {"measure": "product", "n_in": n_in, "n_out": n_out, "batch": batch,
              "threads": torch.get_num_threads(), "bandwidth_bytes_per_s": bandwidth, "products": {}}  # fmt: skip
    for name, (run, rows_read) in products(weights, x, counts_at).items():
        seconds = best_seconds(run, args.repeats, torch.device("cpu"))
        read = 4 * n_in * n_out if rows_read is None else rows_read * n_in * n_out + 4 * n_out
        record["products"][name] = {
            "ms": seconds * 1e3,
            "bytes": read,
            "gb_s": read / seconds / 1e9,
            "fraction_of_bandwidth": read / seconds / bandwidth,
            **({"union_density": rows_read} if name.startswith("int8_event") else {}),
        }
    dense = record["products"]["int8_counts"]["ms"]
    record["int8_event_vs_int8_dense"] = {
        name.removeprefix("int8_event_"): dense / p["ms"] for name, p in record["products"].items()
        if name.startswith("int8_event")
    }  # fmt: skip
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["12x768"], metavar="LxD", help="(default: 12x768)")
    parser.add_argument("--vocab", type=int, default=50277, help="vocabulary of the head (default: 50277)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="(default: 1 16)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per product; the fastest counts")
    parser.add_argument(
        "--working-set-mb",
        type=int,
        default=512,
        help="weight copies cycled through per product, in MB, larger than the last-level cache (default: 512)",
    )
    args = parser.parse_args()
    # torch.ao's quantized tensors (the dynamic kernel's packed weights, a peer here) are deprecated: said once above
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    emit({"measure": "run", "machine": machine_id(torch.device("cpu")), "args": vars(args),
          "meta": {"run": {"time": started, "torch": torch.__version__}}})  # fmt: skip
    summary = {"measure": "summary", "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        bandwidth = copy_bandwidth()
        emit({"measure": "copy_bandwidth", "megabytes": 512, "bytes_per_s": bandwidth, "threads": threads})
        rows = {}
        for n_in, n_out in product_shapes(args.sizes, args.vocab):
            for batch in args.batches:
                record = emit(measure(n_in, n_out, batch, args, bandwidth))
                rows[f"{n_in}x{n_out}/b{batch}"] = {
                    "fraction_of_bandwidth": {k: p["fraction_of_bandwidth"] for k, p in record["products"].items()},
                    "int8_event_vs_int8_dense": record["int8_event_vs_int8_dense"],
                }
        summary["threads"][str(threads)] = rows
    emit(summary)


if __name__ == "__main__":
    main()
