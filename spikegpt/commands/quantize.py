"""``spikegpt quantize``: write a model with its product weights on a low-bit grid, as a checkpoint that loads
anywhere a model does."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_threads_argument, add_weight_bits_argument

CARD = """---
library_name: transformers
tags: [spikegpt, spiking-neural-network, quantized]
---

# {name}, {bits}-bit weights

`{source}` after post-training quantization with `spikegpt quantize --weight-bits {bits}`: every product's
weights (each block's projections and the head) on a symmetric {grid} with one scale per output channel; the
embedding, LayerNorms, decays and mixing ratios stay as they were. The weights are stored as their float32 grid
values, so any loader (`AutoModelForCausalLM.from_pretrained` after `import spikegpt`, `spikegpt generate`,
`serve`, `eval`, `energy`) runs the quantized model; `weight_bits: {bits}` in `config.json` tells `spikegpt` to
price products at that width and, at 8 bits on a CPU, to decode with int8 weights.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quantize",
        help="write a copy of a model with 8-, 4- or 1-bit weights (post-training quantization)",
        description="Quantize every product's weights (the blocks' projections and the head) to a symmetric "
        "integer grid with one scale per output channel (1 bit: the sign times the row's mean |w|), and write "
        "the result as a Hugging Face directory that every command and AutoModelForCausalLM load as they load "
        "any model. For a quantization-aware model, train with weight_bits in the training config instead.",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR|HUB_ID",
        help="the float model to quantize (default: the bundled Tiny Shakespeare model)",
    )
    add_weight_bits_argument(parser, required=True)
    parser.add_argument("output_dir", metavar="OUT_DIR", help="directory to create (must not exist or be empty)")
    add_threads_argument(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError
    from ..hub.checkpoint import default_model_path, load_model

    out = Path(args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty directory")
    model, tokenizer = load_model(args.model, "cpu", "float32", args.weight_bits)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    source = args.model or str(default_model_path())
    grid = "binarized grid (±1)" if args.weight_bits == 1 else f"{args.weight_bits}-bit grid"
    card = CARD.format(name=Path(source).name, bits=args.weight_bits, source=source, grid=grid)
    (out / "README.md").write_text(card, encoding="utf-8")
    print(out)
    return 0
