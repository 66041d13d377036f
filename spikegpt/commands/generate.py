"""``spikegpt generate``: stream a completion of a prompt to stdout."""

from __future__ import annotations

import argparse
import sys
import time

from ..runtime.engine import EngineConfig
from ..runtime.products import DECODE_HELP, DECODE_MODES
from .common import add_model_arguments, add_threads_argument


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="complete a prompt, streaming the text as it is generated",
        description="Complete a prompt: the prompt is read with the parallel form, then one token at a time with "
        "the recurrent form, and the text is printed as it comes. A summary line (tokens, speed, mean firing "
        "rate) follows on stderr.",
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="text to complete")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most (default: 200)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature; 0 picks the most likely token (default: 0.8)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus sampling: keep the most likely tokens up to this probability mass (default: 1.0)",
    )
    parser.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens; 0 = off (default)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable samples")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step with torch.compile (needs a C++ compiler; about half a minute "
        "before the first token, then faster decoding); without it the step is traced once",
    )
    default = EngineConfig.decode
    parser.add_argument("--decode", choices=DECODE_MODES, default=default, help=f"{DECODE_HELP} (default: {default})")
    add_threads_argument(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import GenerationError
    from ..hub.checkpoint import load_model
    from ..hub.tokenizer import encode_counting_unknown
    from ..runtime.engine import Engine, GenerationRequest, generate
    from ..runtime.sampling import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    model, tokenizer = load_model(args.model, args.device, args.dtype, args.weight_bits)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=1, compile=args.compile, decode=args.decode))
    prompt_ids, unknown = encode_counting_unknown(tokenizer, args.prompt)
    if unknown:
        print(f"warning: {unknown} characters of the prompt are outside the model's vocabulary", file=sys.stderr)
    prompt_ids = prompt_ids or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    if not prompt_ids:
        raise GenerationError("the prompt is empty and the model has no end-of-text token to start from")
    start = time.perf_counter()
    first_token_at = None
    final = None
    for events in generate(engine, [GenerationRequest("cli", prompt_ids, params)]):
        for event in events:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            sys.stdout.write(event.text)
            sys.stdout.flush()
            if event.finish_reason is not None:
                final = event
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    if final.finish_reason == "error":
        raise GenerationError(f"generation failed while the engine was at its {final.error!r} stage (see the log)")
    decode_time = elapsed - (first_token_at - start)
    speed = (final.completion_tokens - 1) / decode_time if final.completion_tokens > 1 and decode_time > 0 else 0.0
    rate = float(final.stats.firing_rate())
    threads = torch.get_num_threads()
    print(
        f"[prompt {final.prompt_tokens} tokens, generated {final.completion_tokens} tokens in {elapsed:.2f} s "
        f"(first token after {first_token_at - start:.3f} s, then {speed:.1f} tokens/s), "
        f"mean firing rate {rate:.3f}, finish reason {final.finish_reason}, {threads} CPU thread"
        + ("s]" if threads != 1 else "]"),
        file=sys.stderr,
    )
    return 0
