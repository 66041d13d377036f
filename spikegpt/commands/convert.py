"""``spikegpt convert``: an original SpikeGPT ``.pth`` checkpoint → a Hugging Face directory."""

from __future__ import annotations

import argparse
import sys

from .common import add_threads_argument


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original SpikeGPT .pth checkpoint into a Hugging Face directory",
        description="Convert a state dict saved by the original SpikeGPT training code (ridgerchu/SpikeGPT) into a "
        "directory that AutoModelForCausalLM.from_pretrained loads after `import spikegpt`. Layer count, width, "
        "vocabulary, FFN width and ffnPre are inferred from the tensors. The file is read with "
        "torch.load(weights_only=True): nothing but tensors is ever unpickled.",
    )
    parser.add_argument("source", metavar="ORIGINAL.pth", help="the original checkpoint")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="directory to create (must not exist or be empty)")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument(
        "--tokenizer",
        metavar="TOKENIZER",
        help="tokenizer to save with the model: a tokenizer.json (e.g. the original's "
        "20B_tokenizer.json for the 216M model), a directory holding one, or a Hub id",
    )
    vocab.add_argument(
        "--char-vocab",
        metavar="VOCAB.json",
        help='the original\'s character vocabulary file ({"0": "\\n", ...}, e.g. vocab_book.json)',
    )
    parser.add_argument(
        "--ctx-len",
        type=int,
        default=1024,
        help="context length the model was trained with, recorded in the config (default: 1024)",
    )
    parser.add_argument(
        "--match-model-run",
        action="store_true",
        help="reproduce the original inference code src/model_run.py instead of the trained function: "
        "float (not spiking) embedding unless the vocabulary has 77 tokens, and activations halved "
        "every 6 layers (RWKV_RESCALE_LAYER = 6)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="store the weights in this dtype (default: as in the checkpoint, written as float32); "
        "time_decay and time_first always stay float32",
    )
    add_threads_argument(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..hub.checkpoint import parse_dtype
    from ..hub.convert import ConversionOptions, convert_checkpoint

    options = ConversionOptions(
        ctx_len=args.ctx_len,
        match_model_run=args.match_model_run,
        tokenizer=args.tokenizer,
        char_vocab=args.char_vocab,
        dtype=parse_dtype(args.dtype),
    )
    convert_checkpoint(args.source, args.output_dir, options, progress=lambda m: print(m, file=sys.stderr))
    if not (args.tokenizer or args.char_vocab):
        print(
            "note: no --tokenizer given; the directory holds weights only, so generate and serve need a tokenizer "
            "added to it",
            file=sys.stderr,
        )
    print(args.output_dir)
    return 0
