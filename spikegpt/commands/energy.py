"""``spikegpt energy``: run a model over a text and estimate the energy of its operations from the measured spikes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_model_arguments, add_threads_argument


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "energy",
        help="estimate the energy of running a model over a text, from its measured spikes",
        description="Read a text with the model (the parallel form, in chunks that carry the recurrent state), "
        "count the spikes of every layer, and turn them into operation counts (MAC, AC, neuron updates, "
        "elementwise steps) and the weight bytes each product read (dense hardware: every row; event-driven: the "
        "rows of nonzero inputs) under an accounting rule, priced with a hardware profile (per operation, and per "
        "byte from on-chip SRAM or DRAM). Prints a per-layer table of operations, data movement and their total, "
        "energy per token and ratios against three baselines (the same model with spiking off, a dense int8 model "
        "of equal bit width, and the SpikeGPT paper's vanilla-GPT formula). The result is an ESTIMATE: it leaves "
        "out the movement of activations and the recurrent state, static power and off-chip I/O. Logits are "
        "counted at every position, as when a model scores a text.",
    )
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="UTF-8 text file to read")
    source.add_argument("--prompt", metavar="TEXT", help="text to read, given on the command line")
    parser.add_argument(
        "--rule",
        choices=["strict", "paper", "event"],
        default="strict",
        help="accounting rule, each product priced from what it read: 'strict' counts one accumulate (AC) per unit "
        "of spike count x fan-out where a product's input is whole numbers (spikes), a multiply-accumulate (MAC) "
        "per element where it is real (a LayerNorm output); 'event' skips zero inputs (event-driven hardware with "
        "graded spikes); 'paper' follows the SpikeGPT paper's Table 1 (projections and FFN as AC x measured "
        "firing rate, WKV as 6Td MAC) (default: strict)",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME|PATH",
        default=None,
        help="energy per operation: a built-in profile (45nm-fp32, 45nm-fp16, 45nm-int8, loihi, openspike-130nm, "
        "rram-cim-22nm) or a .toml/.json "
        "profile file (see --list-profiles for the format) (default: 45nm-fp32)",
    )
    parser.add_argument(
        "--weight-memory",
        choices=["auto", "sram", "dram"],
        default=None,
        help="where the weights are read from, overriding the profile's setting: 'auto' (on-chip SRAM when all the "
        "model's weight matrices fit the profile's sram_bytes, else DRAM), or always 'sram' or 'dram' (default: "
        "the profile's, 'auto' for every built-in profile)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also save a figure: firing rate per layer, energy per layer split by operation kind, and the total "
        "beside the two baselines with their ratios (needs matplotlib: pip install 'spikegpt[plot]')",
    )
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        metavar="N",
        default=512,
        help="tokens per forward pass; the state carries between chunks, so the result does not depend on it "
        "(default: 512)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, metavar="N", help="read only the first N tokens of the text"
    )
    parser.add_argument(
        "--list-profiles",
        action="store_true",
        help="print the built-in profiles as TOML (a template for your own profile file) and exit",
    )
    add_threads_argument(parser)
    parser.set_defaults(run=run)
    return parser


def _read_text(args: argparse.Namespace) -> str:
    from ..errors import EnergyError

    if args.prompt is not None:
        return args.prompt
    if args.text is None:
        raise EnergyError("give the text to read: --text FILE or --prompt TEXT")
    try:
        return Path(args.text).read_text(encoding="utf-8")
    except OSError as e:
        raise EnergyError(f"{args.text}: cannot read the text ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise EnergyError(f"{args.text}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def run(args: argparse.Namespace) -> int:
    from ..energy import BUILTIN_PROFILES, energy_report, read_spike_stats, resolve_profile
    from ..energy.render import format_table, plot_report, pyplot
    from ..errors import EnergyError

    if args.list_profiles:
        print("\n".join(profile.to_toml() for profile in BUILTIN_PROFILES.values()), end="")
        return 0
    if args.chunk_tokens < 1:
        raise EnergyError(f"--chunk-tokens must be at least 1, got {args.chunk_tokens}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise EnergyError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    profile = resolve_profile(args.profile)  # bad options fail before the model loads
    if args.weight_memory is not None:
        profile = profile.with_weight_memory(args.weight_memory)
    if args.plot:
        pyplot()
    text = _read_text(args)

    from ..hub.checkpoint import load_model

    model, tokenizer = load_model(args.model, args.device, args.dtype, args.weight_bits)
    ids = tokenizer.encode(text)[: args.max_tokens]
    if not ids:
        raise EnergyError("the text is empty: nothing to read")
    stats = read_spike_stats(model, ids, args.chunk_tokens)
    report = energy_report(stats, model.config, args.rule, profile)
    if args.plot:
        plot_report(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(terms=True), indent=2))
    else:
        print(format_table(report))
    if args.plot:
        print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0
