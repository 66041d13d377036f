"""The spike-driven study (README, "Where the spikes go"): where the spikes go, what it costs in quality, what the
products read and what that is estimated to cost in energy.

For each model: held-out bits per byte (the whole held-out 10% of Tiny Shakespeare in 256-character blocks, each
from a fresh state, as ``spikegpt eval``), the gap to the non-spiking twin, the firing rate and zero-input fraction
per projection, and the energy per token of that same evaluation under the ``strict`` and ``event`` rules with
the ratios to ``spiking_off`` (the same model with spikes off) and ``equal_bit_int8`` (a dense int8 model of equal
width). Prints one JSON object and writes it to ``--out``; ``--markdown`` prints the study table too.

The models are trained by ``train/configs/shakespeare-char.yaml`` (residual, and --no-spiking for the twin) and
``train/configs/shakespeare-driven.yaml`` (--input-spikes binary / counts); a checkpoint directory works too
(its step is reported).

    python bench/driven_study.py --dataset ../shared/data/tinyshakespeare/input.txt \\
        --model residual=spikegpt/assets/spikegpt-shakespeare --model inputs-counts=runs/driven-counts \\
        --twin-bits-per-byte 2.0810 --out bench/results/driven-study.json --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from spikegpt.energy import energy_report
from spikegpt.hub.checkpoint import load_model
from spikegpt.train.data import DataSource, eval_stream, load_corpus
from spikegpt.train.evaluate import evaluate_with_stats, make_eval_set

RULES = ("strict", "event")


def trained_steps(path: Path) -> int | None:
    """The step of a training checkpoint, or of the run that exported a final model (its metrics log)."""
    state = path / "trainer_state.json"
    if state.is_file():
        return int(json.loads(state.read_text())["step"])
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        return max((r["step"] for r in lines), default=None)
    return None


def evaluate_model(
    path: str,
    dataset: str,
    batch_size: int,
    max_blocks: int | None,
    weight_bits: int | None = None,
    split: str = "validation",
):
    """The model at ``path`` on the held-out tail of ``dataset`` (as ``spikegpt eval``; ``split="train"``: the whole
    of a text file, for a test file apart from the training text): its study row without energy, its spike
    statistics and its config. ``weight_bits``: its weights on that grid (post-training)."""
    model, tokenizer = load_model(path, weight_bits=weight_bits)
    corpus = load_corpus(DataSource(dataset))
    stream = eval_stream(corpus, tokenizer, split, "train", 0.1)
    blocks, unknown = stream.packed(model.config.ctx_len)
    eval_set = make_eval_set(blocks, tokenizer, max_blocks, unknown)
    started = time.perf_counter()
    result, stats = evaluate_with_stats(model, eval_set, batch_size, progress=False)
    c, driven = model.config, model.layout.spiking_inputs
    row = {
        "model": str(path),
        "steps": trained_steps(Path(path)),
        "spike_placement": c.spike_placement if c.spiking else "none (spiking off)",
        "input_spikes": c.input_spikes if driven else None,
        "spike_count_max": c.spike_count_max if driven and c.input_spikes == "counts" else None,
        "spike_count_scale": c.spike_count_scale if driven and c.input_spikes == "counts" else None,
        "bits_per_byte": result.bits_per_byte,
        "tokens": result.tokens,
        "residual_firing_rate": result.firing_rate,
        "site_rates": result.site_rates,
        "input_zero_fraction": result.input_zero_fraction,
        "spikes_per_input": result.spikes_per_input,
        "inputs": result.inputs,
        "eval_seconds": round(time.perf_counter() - started, 1),
    }
    return row, stats, c


def study_row(name: str, path: str, dataset: str, batch_size: int, max_blocks: int | None, profile=None) -> dict:
    row, stats, c = evaluate_model(path, dataset, batch_size, max_blocks)
    row = {"name": name, **row, "energy": {}}
    for rule in RULES:
        report = energy_report(stats, c, rule, profile)
        baselines = {b.name: b for b in report.baselines}
        row["energy"][rule] = {
            "profile": report.profile.name,
            "j_per_token": report.energy_j_per_token,
            "x_vs_spiking_off": baselines["spiking_off"].ratio,
            "x_vs_equal_bit_int8": baselines["equal_bit_int8"].ratio,
            "spiking_off_j_per_token": baselines["spiking_off"].energy_j / report.tokens,
            "equal_bit_int8_j_per_token": baselines["equal_bit_int8"].energy_j / report.tokens,
            # with data movement (the weight bytes each product read, from report.weight_memory)
            "weight_memory": report.weight_memory,
            "data_movement_j_per_token": report.data_movement_j / report.tokens,
            "total_j_per_token": report.total_j_per_token,
            "total_x_vs_spiking_off": baselines["spiking_off"].total_ratio,
            "total_x_vs_equal_bit_int8": baselines["equal_bit_int8"].total_ratio,
        }
    return row


def markdown(rows: list[dict], twin: float | None) -> str:
    head = (
        "| model | steps | bits/byte | gap to twin | zero inputs | strict µJ/token | strict × vs spiking off "
        "| strict × vs int8 | event µJ/token | event × vs spiking off | event × vs int8 |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    if twin is not None:
        lines.append(f"| non-spiking twin (card) | 1200 | {twin:.4f} | — | — | — | — | — | — | — | — |")
    for r in rows:
        gap = f"{100 * (r['bits_per_byte'] / twin - 1):+.1f}%" if twin else "—"
        s, e = r["energy"]["strict"], r["energy"]["event"]
        lines.append(
            f"| {r['name']} | {r['steps'] or '—'} | {r['bits_per_byte']:.4f} | {gap} | {r['input_zero_fraction']:.3f} "
            f"| {s['j_per_token'] * 1e6:.2f} | {s['x_vs_spiking_off']:.2f} | {s['x_vs_equal_bit_int8']:.2f} "
            f"| {e['j_per_token'] * 1e6:.2f} | {e['x_vs_spiking_off']:.2f} | {e['x_vs_equal_bit_int8']:.2f} |"
        )
    return "\n".join(lines)


def projection_table(rows: list[dict]) -> str:
    """Zero fraction and spikes per input element of each projection, one column per model."""
    names = list(rows[0]["inputs"])
    lines = ["| projection | " + " | ".join(r["name"] for r in rows) + " |", "| --- |" + " --- |" * len(rows)]
    for p in names:
        cells = [f"{r['inputs'][p]['zero_fraction']:.2f} / {r['inputs'][p]['spikes_per_input']:.2f}" for r in rows]
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the corpus (Tiny Shakespeare's input.txt)")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model directory or training checkpoint, with its name in the table (repeat)",
    )
    parser.add_argument(
        "--twin-bits-per-byte",
        type=float,
        default=None,
        help="held-out bits per byte of the non-spiking twin, when its checkpoint is not at hand",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per forward pass (default 16)")
    parser.add_argument("--max-blocks", type=int, default=None, help="evaluate only the first N held-out blocks")
    parser.add_argument("--profile", default=None, help="energy profile (default 45nm-fp32; e.g. 45nm-int8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    parser.add_argument("--markdown", action="store_true", help="print the study tables in Markdown (stderr)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--model takes NAME=PATH, got {spec!r}")
        rows.append(study_row(name, path, args.dataset, args.batch_size, args.max_blocks, args.profile))
        print(f"{name}: {rows[-1]['bits_per_byte']:.4f} bits/byte", file=sys.stderr)
    twin = args.twin_bits_per_byte
    out = {"twin_bits_per_byte": twin, "max_blocks": args.max_blocks, "models": rows}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        print(markdown(rows, twin) + "\n\n" + projection_table(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
