"""``spikegpt compare``: one prompt, one seed, two or three models; their texts and the table of their differences.

The models run here, one after the other, each in the engine a default ``spikegpt serve`` runs (without its
prefix-state cache), so for the same seeded request the figures are the server's: the "energy" field is the one
function the server calls, the table is ``spikegpt.energy.compare``'s (which ``POST /v1/compare`` and the
playground's /compare page show), and bits per byte come from the log-probabilities of the continuation's tokens
after the prompt, as ``/v1/completions`` with echo and logprobs reports them.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from .common import BUNDLED_NAMES_HELP, add_threads_argument

MAX_COMPARED = 3  # as POST /v1/compare


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="run one prompt on two or three models and print the table of their differences",
        description="Run one prompt with one seed on two or three models, here (no server needed), and print each "
        "model's text and a table: tokens generated, estimated energy per generated token with data movement under "
        "each accounting rule (strict, paper, event), the mean firing rate, the share of the products' input "
        "elements that were zero and, for a given continuation (--continuation or --dataset), the bits per byte "
        "of that continuation after the prompt; each figure also relative to the first model's. The figures are "
        "those a default `spikegpt serve` of the same models answers for the same seeded request (POST "
        "/v1/compare, with the server's prefix-state cache off or cold).",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR|HUB_ID|NAME",
        help="a model to compare: a local Hugging Face directory, a Hub id or a bundled model's name "
        f"({BUNDLED_NAMES_HELP}); give it two or three times (the first is the reference of the ratios)",
    )
    parser.add_argument("--prompt", required=True, help="the text every model continues")
    scored = parser.add_mutually_exclusive_group()
    scored.add_argument(
        "--continuation", metavar="TEXT", help="a continuation of the prompt to score each model on (bits per byte)"
    )
    scored.add_argument(
        "--dataset",
        metavar="FILE",
        help="a UTF-8 text file read as the continuation of the prompt to score each model on (bits per byte)",
    )
    parser.add_argument("--max-tokens", type=int, default=16, metavar="N", help="tokens to generate (default: 16)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy (default: 1.0)"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's probability mass (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens; 0 = off (default)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, the same for every model (default: none)")
    parser.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-text token up to --max-tokens")
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu, cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default: auto = float32)",
    )
    parser.add_argument(
        "--energy-profile",
        metavar="NAME|PATH",
        default=None,
        help="hardware profile pricing the energy (a built-in profile's name or a .toml/.json file; see `spikegpt "
        "energy --list-profiles`) (default: 45nm-fp32)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (the runs and the table) instead of text"
    )
    add_threads_argument(parser)
    parser.set_defaults(run=run)
    return parser


def _continuation(args: argparse.Namespace) -> str | None:
    from ..errors import GenerationError

    if args.dataset is None:
        if args.continuation == "":
            raise GenerationError("--continuation must not be empty (leave it out to score nothing)")
        return args.continuation
    try:
        text = Path(args.dataset).read_text(encoding="utf-8")
    except OSError as e:
        raise GenerationError(f"{args.dataset}: cannot read the continuation ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise GenerationError(f"{args.dataset}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not text:
        raise GenerationError(f"{args.dataset}: the file is empty: nothing to score")
    return text


def _check_models(models: list[str]) -> None:
    from ..errors import GenerationError

    if not 2 <= len(models) <= MAX_COMPARED:
        raise GenerationError(f"give --model two or three times, got {len(models)}")
    if len(set(models)) != len(models):
        raise GenerationError("each model once: a --model is given twice")


def run(args: argparse.Namespace) -> int:
    from ..energy import resolve_profile
    from ..energy.compare import compare_table, format_table
    from ..runtime.sampling import SamplingParams

    _check_models(args.model)
    continuation = _continuation(args)
    profile = resolve_profile(args.energy_profile)  # a bad profile fails before any model loads
    # the sampling of a /v1/completions request with these fields (its defaults are these flags')
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        logprobs=0,
    )
    results = [_run_model(name, args, params, continuation, profile) for name in args.model]
    table = compare_table([run for run, _ in results], args.model)
    if args.json:
        print(json.dumps({"object": "compare", "runs": [body for _, body in results], "table": table}, indent=2))
        return 0
    for _, body in results:
        print(f"--- {body['model']} ({body['usage']['completion_tokens']} tokens, {body['finish_reason']})")
        print(args.prompt + body["text"])
    print()
    print(format_table(table))
    return 0


def _run_model(name: str, args: argparse.Namespace, params, continuation: str | None, profile):
    """One model's run (and scoring of the continuation), as a default server runs them: the compare table's
    ``Run`` and the run as POST /v1/compare reports it."""
    from ..energy import energy_field
    from ..energy.compare import Run
    from ..errors import GenerationError
    from ..hub.checkpoint import load_model
    from ..hub.tokenizer import encode_counting_unknown
    from ..modeling.stats import SpikeStats
    from ..runtime.engine import Engine, GenerationRequest, generate
    from ..runtime.sampling import SamplingParams
    from ..serve.settings import ServeSettings

    model, tokenizer = load_model(name, args.device, args.dtype)
    engine = Engine(model, tokenizer, ServeSettings(state_cache_mb=0).engine_config())
    prompt, _ = encode_counting_unknown(tokenizer, args.prompt)
    if not prompt:  # an empty prompt starts a new document, as after an end-of-text token (as the server reads it)
        if tokenizer.eos_token_id is None:
            raise GenerationError(f"{name}: the prompt is empty and the model has no end-of-text token")
        prompt = [tokenizer.eos_token_id]
    final, text = _last_event(generate(engine, [GenerationRequest("run", prompt, params)]))
    if final.finish_reason == "error":
        raise GenerationError(f"{name}: generation failed at its {final.error!r} stage (see the log)")
    energy = energy_field(SpikeStats.stack([final.stats]), model.config, final.completion_tokens, profile)
    logprobs = None
    if continuation is not None:
        scored, _ = encode_counting_unknown(tokenizer, continuation, add_special_tokens=False)
        # as /v1/completions scores a prompt: echo, logprobs 0, max_tokens 0
        scoring = GenerationRequest("score", prompt + scored, SamplingParams(max_tokens=0, logprobs=0), 0)
        read = [e.prompt_logprobs for events in generate(engine, [scoring]) for e in events if e.prompt_logprobs]
        logprobs = [entry.logprob for entry in read[0][-len(scored) :]]
    del engine, model
    gc.collect()  # one model in memory at a time
    usage = {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }
    body = {"model": name, "text": text, "finish_reason": final.finish_reason, "usage": usage, "energy": energy}
    return Run(name, final.completion_tokens, energy, continuation, logprobs), body


def _last_event(batches):
    """The final event of a single request's run, and its whole text."""
    text, final = "", None
    for events in batches:
        for event in events:
            text += event.text
            final = event
    return final, text
