"""``model.generate()`` against ``spikegpt generate``'s engine, batch 1, greedy, on the bundled model (CPU, fp32).

Three ways to decode the same tokens, timed in the same run after one warm-up each:
  - ``generate()``: Hugging Face's loop over the model's forward, which decodes through the traced recurrent step;
  - ``generate()`` with the step eager (the model's plain forward, as before the traced step served generate());
  - the engine, as ``spikegpt generate`` runs it (traced step, its own sampler and text stream).
Decoding speed excludes the prompt. Prints one JSON object per measurement, then a summary with the ratios.
    python bench/generate.py --tokens 200 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import emit

from spikegpt import SpikeGPTForCausalLM
from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import Engine, EngineConfig, GenerationRequest, generate
from spikegpt.runtime.sampling import SamplingParams

PROMPT = "ROMEO:"


def time_generate(model, ids: torch.Tensor, tokens: int) -> float:
    """Decoding tokens/s of generate(): the time of a 1-token call (prompt + first token) is subtracted."""

    def run(n: int) -> float:
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - started

    run(tokens)  # warm-up (traces the step)
    return (tokens - 1) / (run(tokens) - min(run(1) for _ in range(3)))


def time_engine(model, tokenizer, ids: torch.Tensor, tokens: int) -> float:
    engine = Engine(model, tokenizer, EngineConfig(max_batch=1))

    def run() -> float:
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        first = None
        for events in generate(engine, [GenerationRequest("bench", ids[0].tolist(), params)]):
            if first is None and events:
                first = time.perf_counter()
        return (tokens - 1) / (time.perf_counter() - first)

    run()
    return run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per run (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per way; the median is reported (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model()
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    traced_step = SpikeGPTForCausalLM.decoding_steps
    ways = {
        "generate_traced": lambda: time_generate(model, ids, args.tokens),
        "generate_eager": lambda: time_generate(model, ids, args.tokens),
        "engine": lambda: time_engine(model, tokenizer, ids, args.tokens),
    }
    results = {}
    for name, measure in ways.items():
        SpikeGPTForCausalLM.decoding_steps = None if name == "generate_eager" else traced_step
        speeds = [measure() for _ in range(args.repeats)]
        results[name] = statistics.median(speeds)
        emit({"measure": "decode", "way": name, "tokens": args.tokens, "tok_s": speeds,
              "median_tok_s": results[name], "threads": torch.get_num_threads()})  # fmt: skip
    SpikeGPTForCausalLM.decoding_steps = traced_step
    summary = {
        "measure": "summary",
        **{f"{k}_tok_s": v for k, v in results.items()},
        "generate_traced_vs_engine": results["generate_traced"] / results["engine"],
        "generate_eager_vs_engine": results["generate_eager"] / results["engine"],
    }
    emit(summary)


if __name__ == "__main__":
    main()
