"""Arguments several subcommands share."""

from __future__ import annotations

import argparse

THREADS_HELP = (
    "CPU threads for the model's arithmetic; more threads than the cores other work leaves idle make every "
    "operation wait for a thread the system has pushed off"
)
THREADS_DEFAULT = (
    "OMP_NUM_THREADS when set, else the CPUs this process may use (affinity mask, container CPU quota) that other "
    "work leaves idle, at most their physical cores and 8, at least 1"
)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--threads, which ``spikegpt.cli`` applies (``spikegpt.threads.apply_threads``) before the command runs."""
    parser.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"{THREADS_HELP} (default: {THREADS_DEFAULT})",
    )
    parser.set_defaults(apply_threads=True)


BUNDLED_NAMES_HELP = (  # spikegpt.hub.checkpoint.BUNDLED_MODELS, without importing torch for --help
    "spikegpt-shakespeare, spikegpt-shakespeare-driven, spikegpt-shakespeare-twin, spikegpt-shakespeare-driven-k4"
)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = False, several: bool = False) -> None:
    """--model, --device, --dtype, --weight-bits; ``several``: --model may be given more than once (a list)."""
    model_help = (
        "a SpikeGPT checkpoint: a local Hugging Face directory, a Hub id or the name of a bundled model "
        f"({BUNDLED_NAMES_HELP})"
    )
    if several:
        model_help += "; give it once per model to use several"
    parser.add_argument(
        "--model",
        required=required,
        default=None,
        action="append" if several else "store",
        metavar="DIR|HUB_ID|NAME",
        help=model_help + ("" if required else " (default: the bundled Tiny Shakespeare model)"),
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default: auto = float32)",
    )
    add_weight_bits_argument(parser)


def add_weight_bits_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=[8, 4, 1],
        required=required,
        default=None,
        help="quantize every product's weights after loading (post-training): 8 or 4 bits with one scale per "
        "output channel, 1 = binarized with a scale"
        + ("" if required else "; a checkpoint written by `spikegpt quantize` or quantization-aware training is "
           "already quantized (default: the weights as stored)"),
    )  # fmt: skip
