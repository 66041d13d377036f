"""The crossover of event-driven products on this machine: up to which fraction of active inputs ``sparse_linear``
(only the weight rows of nonzero inputs) beats the dense product, per product shape and batch size; with
``--dtype int8``, up to which fraction ``int8_sparse_linear`` beats ``int8_linear`` (spike counts times 8-bit
weights, the products of an 8-bit model on a CPU; on CUDA the Triton kernel against the dense fp32 product).

For every product shape of the given model sizes (d→d, d→4d, 4d→d and the d→vocabulary head) and every batch size,
the inputs get a fraction p of nonzero values, drawn independently per row (so a batch's union of active inputs
fills in as real activations do), on a grid of p; both products are timed (the fastest of ``--repeats``: on a
shared machine a median still holds the waits for descheduled worker threads) and the
crossover is the grid density up to which the event-driven product won more often than it lost (0 if it never
wins, 1 if it always does). The weights are input-major, as the engine lays them out. A float product decides row by
row, so its crossover is a row's fraction of active inputs; an int8 product reads the batch's union of active inputs
once and decides by it, so its crossover is the union's fraction at that grid point (the same at batch 1). Each
call reads a different copy of the weight, cycling through copies that together exceed the last-level cache
(``--working-set-mb``), because in a decoding step a product's weight was last read a whole token ago: timed
against one cache-hot weight, the dense product looks faster than it is in the step.

The crossovers are merged into the file the engine reads for ``--decode auto`` (``spikegpt.runtime.products``:
``$SPIKEGPT_CROSSOVER``, else ``~/.cache/spikegpt/crossover.json``), keyed by this machine and the product's dtype,
batch and shape. Prints one JSON object per shape and batch, then a summary.
    python bench/crossover.py                             # 6x256 12x512 12x768, batches 1 and 16
    python bench/crossover.py --sizes 4x192 --vocab 65 --batches 1 16
    python bench/crossover.py --dtype int8                # the int8 products (for --weight-bits 8 --decode auto)
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import emit

from spikegpt.kernels import int8_linear, int8_sparse_linear, sparse_linear
from spikegpt.runtime.products import Crossovers, machine_id, product_key

GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def best_seconds(fn, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    return min(timed() for _ in range(repeats))


def product_shapes(sizes: list[str], vocab: int) -> list[tuple[int, int]]:
    shapes = set()
    for size in sizes:
        d = int(size.lower().split("x")[1])
        shapes |= {(d, d), (d, 4 * d), (4 * d, d), (d, vocab)}
    return sorted(shapes)


def crossover_of(densities: list[float], dense: list[float], sparse: list[float], margin: float = 0.0) -> float:
    """The density up to which the event-driven product wins (by ``margin``: a win is ``sparse ≤ (1 − margin) ·
    dense``): the grid point below which it won at the most points more than it lost (one timing disturbed by the
    machine's other work moves it by one point, not to 0 or 1)."""
    score, best_score, crossover = 0, 0, 0.0
    for p, d, s in zip(densities, dense, sparse, strict=True):
        score += 1 if s <= (1 - margin) * d else -1
        if score > best_score:
            best_score, crossover = score, p
    return crossover


def float_products(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, working_set: int, g):
    """(dense, event-driven) products of ``x`` against input-major weights cycled through ``working_set`` bytes."""
    weight = torch.randn(n_out, n_in, generator=g).to(device, dtype).t().contiguous().t()
    copies = max(1, -(-working_set // (weight.numel() * weight.element_size())))
    weights = itertools.cycle([weight] + [weight.clone().t().contiguous().t() for _ in range(copies - 1)])
    return (lambda x: F.linear(x, next(weights))), (lambda x: sparse_linear(x, next(weights), 1.0))


def int8_products(n_in: int, n_out: int, device: torch.device, working_set: int, g):
    """(dense, event-driven) 8-bit products of spike counts, cycled through ``working_set`` bytes of codes (each
    copy in both layouts, as an int8 product holds them); on CUDA the dense one is the fp32 product (cuBLAS)."""
    codes = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8, generator=g)
    scales = torch.rand(n_out, generator=g) / 100
    n_copies = max(1, -(-working_set // (2 * codes.numel())))
    copies = [codes] + [codes.clone() for _ in range(n_copies - 1)]
    weights = itertools.cycle([(c.to(device), c.t().contiguous().to(device)) for c in copies])
    scales = scales.to(device)
    if device.type == "cuda":
        floats = codes.float().to(device) * scales[:, None]
        return (lambda x: F.linear(x, floats)), (lambda x: int8_sparse_linear(x, next(weights)[1], scales, True))
    return (
        lambda x: int8_linear(x, next(weights)[0], scales, True),
        lambda x: int8_sparse_linear(x, next(weights)[1], scales, True),
    )


@torch.inference_mode()
def measure(
    n_in: int,
    n_out: int,
    batch: int,
    dtype: torch.dtype,
    repeats: int,
    device: torch.device,
    working_set: int,
    margin: float,
) -> dict:
    g = torch.Generator().manual_seed(n_in * 7 + n_out)
    if dtype == torch.int8:
        dense, sparse = int8_products(n_in, n_out, device, working_set, g)
    else:
        dense, sparse = float_products(n_in, n_out, dtype, device, working_set, g)
    dense_s, sparse_s, unions = [], [], []
    for p in GRID:
        active = torch.rand(batch, n_in, generator=g) < p
        unions.append(float(active.any(0).float().mean()))
        if dtype == torch.int8:  # spike counts
            x = (torch.randint(1, 4, (batch, n_in), generator=g) * active).to(device, torch.float32)
        else:
            x = (torch.randn(batch, n_in, generator=g) * active).to(device, dtype)
        dense_s.append(best_seconds(lambda x=x: dense(x), repeats, device))
        sparse_s.append(best_seconds(lambda x=x: sparse(x), repeats, device))
    crossover = crossover_of(list(GRID), dense_s, sparse_s, margin)
    if dtype == torch.int8 and 0 < crossover < 1:  # the int8 product decides by the union (module docstring)
        crossover = unions[GRID.index(crossover)]
    return {
        "n_in": n_in,
        "n_out": n_out,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "densities": list(GRID),
        "union_densities": [round(u, 4) for u in unions],
        "dense_ms": [round(t * 1e3, 4) for t in dense_s],
        "sparse_ms": [round(t * 1e3, 4) for t in sparse_s],
        "crossover": round(crossover, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["6x256", "12x512", "12x768"], metavar="LxD")
    parser.add_argument("--vocab", type=int, default=50277, help="vocabulary of the head (default: 50277)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="batch sizes (default: 1 16)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "int8"],
        help="the products' weights: float, or int8 (the 8-bit products of --weight-bits 8) (default: float32)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per point (default: 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--working-set-mb",
        type=int,
        default=512,
        help="weight copies cycled through per product, in MB, larger than the last-level cache so every call "
        "reads its weight from memory as in a decoding step; 0 = one cache-hot weight (default: 512)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="how much faster the event-driven product must be to count as a win, so that timing noise and the "
        "costs a single-product timing does not see (the step's other work, the decision per row) favour the "
        "dense product (default: 0.1)",
    )
    parser.add_argument("--out", default=None, help="crossover file to update (default: the one the engine reads)")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    products = {}
    for n_in, n_out in product_shapes(args.sizes, args.vocab):
        for batch in args.batches:
            working_set = args.working_set_mb * 2**20
            record = measure(n_in, n_out, batch, dtype, args.repeats, device, working_set, args.margin)
            emit({"measure": "crossover", **record})
            products[product_key(dtype, batch, n_in, n_out)] = record["crossover"]
    summary = {"measure": "summary", "machine": machine_id(device), "crossovers": products}
    if not args.dry_run:
        summary["written"] = str(Crossovers(machine_id(device), products).save(Path(args.out) if args.out else None))
    emit(summary)


if __name__ == "__main__":
    main()
