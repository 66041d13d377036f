"""``spikegpt train`` and ``spikegpt eval``.

``train`` reads a YAML/JSON config file (``--config``, a path or the name of a shipped example) and then the
flags, which override it; every ``TrainConfig`` option is a flag of the same name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import types
import typing
from pathlib import Path

from spikegpt.commands.common import add_model_arguments, add_threads_argument
from spikegpt.errors import TrainingError
from spikegpt.runtime.products import DECODE_HELP, DECODE_MODES

from .config import FIELDS, TrainConfig, default_config_path, make_config, read_config_file
from .noise_eval import add_weight_noise_arguments, device_model_from_args, evaluate_with_noise

# model architecture flags, stored under the config's ``model`` mapping
MODEL_FLAGS = {
    "n_layer": (int, "number of blocks"),
    "n_embd": (int, "width"),
    "ctx_len": (int, "context length trained on (tokens per block)"),
    "dropout": (float, "dropout on the residual stream after each block (the original: 0.03)"),
    "lif_threshold": (float, "LIF firing threshold (the target of threshold annealing)"),
    "spike_placement": (
        str,
        "where the spikes go: 'residual' (published SpikeGPT) or 'inputs' (every projection reads spikes)",
    ),
    "input_spikes": (str, "with --spike-placement inputs: 'binary' (LIF spikes) or 'counts' (integer spike counts)"),
    "spike_count_max": (int, "with --input-spikes counts: K, the largest count (inputs in -K..K; 1: ternary spikes)"),
    "spike_count_scale": (float, "with --input-spikes counts: k in the adaptive threshold mean|x| / k"),
}
SHIPPED = sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    """One flag per ``TrainConfig`` field, its type read from the annotation, its default left to the config."""
    default = field.default if field.default is not dataclasses.MISSING else None
    help_text = field.metadata["help"] + (f" (default: {default})" if default not in (None, False) else "")
    kind = typing.get_type_hints(TrainConfig)[field.name]
    args = [t for t in typing.get_args(kind) if t is not type(None)] if isinstance(kind, types.UnionType) else [kind]
    base = args[0]
    if base is bool:
        parser.add_argument(_option(field.name), action=argparse.BooleanOptionalAction, help=help_text)
    elif typing.get_origin(base) is tuple:
        parser.add_argument(_option(field.name), type=float, nargs=2, metavar=("B1", "B2"), help=help_text)
    elif field.name == "resume":
        parser.add_argument(_option(field.name), nargs="?", const="latest", metavar="CHECKPOINT", help=help_text)
    else:
        parser.add_argument(_option(field.name), type=base, choices=field.metadata.get("choices"), help=help_text)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a SpikeGPT on a dataset (or continue a run)",
        description="Train a SpikeGPT with accelerate: on one CPU or GPU as it is, on several processes or machines "
        "under `accelerate launch -m spikegpt.train ...`. Options come from --config, then from these flags. "
        "Writes checkpoints (OUTPUT/checkpoint-STEP), metrics (OUTPUT/metrics.jsonl) and the final model "
        "(OUTPUT itself, a Hugging Face directory).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        metavar="FILE|NAME",
        help=f"YAML or JSON file of options, or a shipped example: {', '.join(SHIPPED)}",
    )
    model = parser.add_argument_group("model (fresh models; with --init-from these override its config)")
    for name, (kind, text) in MODEL_FLAGS.items():
        metavar = "N" if kind is int else "X"
        model.add_argument(_option(name), type=kind, dest=f"model.{name}", metavar=metavar, help=text)
    model.add_argument(
        "--spiking",
        action=argparse.BooleanOptionalAction,
        dest="model.spiking",
        help="LIF and embedding spikes on (default) or off (--no-spiking: the non-spiking reference model)",
    )
    model.add_argument(
        "--learned-thresholds",
        action=argparse.BooleanOptionalAction,
        dest="model.learned_thresholds",
        help="with --spike-placement inputs: learn a threshold multiplier per projection input (LSQ's gradient for "
        "counts, the surrogate's for binary spikes); a converted model's new tensors start at 1x",
    )
    model.add_argument(
        "--train-tokenizer",
        action="store_const",
        const="bpe",
        dest="tokenizer",
        help="learn a byte-level BPE vocabulary of --vocab-size tokens on the training text (= --tokenizer bpe)",
    )
    groups = {
        "init_from": model,
        "dataset": parser.add_argument_group("data"),
        "batch_size": parser.add_argument_group("optimisation"),
        "threshold_start": parser.add_argument_group("spiking extras"),
        "teacher": parser.add_argument_group(
            "training aids of spike-driven models (conversion: --init-from a non-spiking model with the spiking "
            "model options)"
        ),
        "max_steps": parser.add_argument_group("length, evaluation, checkpoints, logs"),
        "push_to_hub": parser.add_argument_group("publishing"),
    }
    group = model
    for field in dataclasses.fields(TrainConfig):
        if field.name == "model":
            continue
        group = groups.get(field.name, group)
        _add_config_flag(group, field)
    add_threads_argument(parser)
    parser.set_defaults(run=run_train, train_parser=parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k in FIELDS}
    values["model"] = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("model.")}
    file_values, source = {}, "flags"
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists() and args.config in SHIPPED:
            path = default_config_path(args.config)
        file_values, source = read_config_file(path), str(path)
    return make_config(file_values, values, source)


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The ``spikegpt train`` command that repeats this run's options (for the model card), however it was launched."""
    words, done = ["spikegpt", "train"], set()
    given = vars(args)
    for action in parser._actions:
        if not action.option_strings or action.dest not in given or action.dest in done or action.const == "bpe":
            continue
        done.add(action.dest)
        value = given[action.dest]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0] if value else action.option_strings[1])
        elif isinstance(value, list | tuple):
            words += [action.option_strings[0], *map(str, value)]
        else:
            words += [action.option_strings[0], str(value)]
    return shlex.join(words)


def run_train(args: argparse.Namespace) -> int:
    from .trainer import train

    summary = train(config_from_args(args), command=command_line(args.train_parser, args))
    if summary.evaluation is not None:
        print(json.dumps({"output_dir": str(summary.output_dir), **summary.evaluation.to_dict()}))
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a dataset: loss, perplexity, bits per byte, firing rates",
        description="Evaluate a SpikeGPT on a dataset split, packed into ctx_len blocks as in training (each block "
        "starts from a fresh state). Reports the loss, perplexity, bits per byte (and per character for a "
        "character vocabulary) and the firing rate of every spiking site. Without the split asked for, the "
        "held-out tail of the training split that `spikegpt train` validates on is used.",
    )
    add_model_arguments(parser)
    parser.add_argument("--dataset", required=True, help="a Hub dataset name, or a local text/json/jsonl/parquet "
                        "file, directory or glob")  # fmt: skip
    parser.add_argument("--dataset-config", default=None, help="the Hub dataset's configuration name")
    parser.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    parser.add_argument("--train-split", default="train", help="training split, to hold out from (default: train)")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=FIELDS["validation_fraction"].default,
        help="when the dataset has no validation split, the last fraction of the training tokens is it "
        f"(default: {FIELDS['validation_fraction'].default}, as in training)",
    )
    parser.add_argument("--text-field", default="text", help="column holding the text (default: text)")
    parser.add_argument("--cache-dir", default=None, help="datasets cache directory (default: HF's)")
    parser.add_argument("--ctx-len", type=int, default=None, help="tokens per block (default: the model's ctx_len)")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass (default: 8)")
    parser.add_argument("--max-blocks", type=int, default=None, help="evaluate only the first N blocks")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default=None,
        help="read each block token by token through the decoding step with these products, as `spikegpt "
        "generate` and `serve --decode` compute (a model with 8-bit weights decodes with int8 products on a CPU): "
        f"the bits per byte of what they decode with; the {DECODE_HELP} (default: the parallel form, which reads "
        "prompts in generate and serve)",
    )
    add_weight_noise_arguments(parser)
    add_threads_argument(parser)
    parser.set_defaults(run=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    from spikegpt.hub.checkpoint import load_model

    from .data import DataSource, eval_stream, load_corpus
    from .evaluate import evaluate, make_eval_set

    device = device_model_from_args(args) if args.weight_noise is not None else None  # checked before loading
    if device is not None and args.noise_draws < 1:
        raise TrainingError(f"--noise-draws must be at least 1, got {args.noise_draws}")
    if device is not None and args.decode is not None:
        raise TrainingError("--decode and --weight-noise do not combine: noisy weights are scored by the parallel form")
    model, tokenizer = load_model(args.model, args.device, args.dtype, args.weight_bits)
    corpus = load_corpus(DataSource(args.dataset, args.dataset_config, args.text_field, args.cache_dir))
    stream = eval_stream(corpus, tokenizer, args.split, args.train_split, args.validation_fraction)
    blocks, unknown = stream.packed(args.ctx_len or model.config.ctx_len)
    eval_set = make_eval_set(blocks, tokenizer, args.max_blocks, unknown)
    if device is not None:
        noisy = evaluate_with_noise(model, eval_set, device, args.noise_draws, args.noise_seed, args.batch_size,
                                    progress=not args.json)  # fmt: skip
        if args.json:
            print(json.dumps({"weight_bits": model.config.weight_bits, **noisy.to_dict()}))
            return 0
        print(f"weight noise       {device.kind} sigma {device.sigma:g}, stuck-at {device.stuck_rate:g}, "
              f"levels {device.levels or 'continuous'}, tiles {device.tile_size}x{device.tile_size}")  # fmt: skip
        print(f"bits per byte      {noisy.bits_per_byte_mean:.4f} ± {noisy.bits_per_byte_std:.4f} "
              f"over {len(noisy.seeds)} draws (seeds {noisy.seeds[0]}..{noisy.seeds[-1]})")  # fmt: skip
        print(f"firing rate        {noisy.firing_rate_mean:.4f} (mean over draws)")
        return 0
    result = evaluate(model, eval_set, args.batch_size, progress=not args.json, decode=args.decode)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"loss               {result.loss:.4f} nats/token over {result.tokens:,} tokens ({result.bytes:,} bytes)")
    if result.unknown_characters:
        print(
            f"unknown            {result.unknown_characters:,} characters ({result.unknown_bytes:,} bytes, "
            f"{result.unknown_bytes / max(result.bytes, 1):.2%}) are outside the vocabulary: each is scored as its "
            "unknown token"
        )
    print(f"perplexity         {result.perplexity:.3f}")
    print(f"bits per byte      {result.bits_per_byte:.4f}")
    if result.bits_per_character is not None:
        print(f"bits per character {result.bits_per_character:.4f}")
    print(f"firing rate        {result.firing_rate:.4f}")
    for site, rate in result.site_rates.items():
        print(f"  {site:<20} {rate:.4f}")
    print(f"zero inputs        {result.input_zero_fraction:.4f} of the projections' input elements")
    print(f"spikes per input   {result.spikes_per_input:.4f} (summed spike magnitudes per input element)")
    for name, read in result.inputs.items():
        print(f"  {name:<26} zero {read['zero_fraction']:.4f}  spikes/input {read['spikes_per_input']:.4f}")
    return 0


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    """Registers ``train`` and ``eval``."""
    return [add_train_parser(subparsers), add_eval_parser(subparsers)]
