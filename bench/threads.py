"""Decoding beside busy processes: ``spikegpt generate --max-new-tokens 200`` (a real process each time) with the
default thread count (``spikegpt.threads``) and with each ``--threads`` value, alone and beside N processes that
each keep a CPU busy (a Python busy loop: the "CPU hog").

The question is whether the default collapses where torch's own count (one thread per core) does: with more
threads than free cores, every operation waits for a thread the system has pushed off its core. Each run's
tokens/s is the one ``generate`` reports (decoding only, after the first token), with the thread count it used
and the load around it. ``OMP_NUM_THREADS`` is removed from the runs' environment, so the default is the policy's;
the default runs first for each load, before the explicit counts add their own load to the load average it reads.
The hogs run for ``--settle`` seconds before the first run of each load.

Prints one JSON object per run, then a summary: tokens/s per load and setting (the median of ``--repeats``) and
each setting's ratio to the best explicit count at that load.

    python bench/threads.py                                  # 0 hogs and one per CPU; default, 1, 2, 4, ... threads
    python bench/threads.py --hogs 2 --threads 1 2 --max-new-tokens 50
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch
from decode import emit

from spikegpt.runtime.products import machine_id
from spikegpt.threads import available_cpus, busy_share, physical_cores

SUMMARY = re.compile(r"generated (\d+) tokens .*then ([\d.]+) tokens/s.*, (\d+) CPU threads?\]")
HOG = "while True: pass"


def start_hogs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def generate(args: argparse.Namespace, threads: int | None) -> dict:
    """One ``spikegpt generate`` process: its tokens/s, thread count and wall time."""
    command = [sys.executable, "-m", "spikegpt.cli", "generate", "--prompt", args.prompt, "--temperature", "0"]
    command += ["--max-new-tokens", str(args.max_new_tokens), "--seed", "0"]
    command += ["--model", args.model] if args.model else []
    command += ["--threads", str(threads)] if threads is not None else []
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - started
    found = SUMMARY.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"spikegpt generate failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    generated, speed, used = found.groups()
    return {"generated": int(generated), "tokens_per_s": float(speed), "threads": int(used), "wall_s": round(wall, 3)}


def measure_load(args: argparse.Namespace, hogs: int) -> dict[str, list[float]]:
    """Every setting at one load: ``hogs`` busy processes beside each run."""
    speeds: dict[str, list[float]] = {}
    running = start_hogs(hogs)
    try:
        time.sleep(args.settle if hogs else 0)
        for setting in [None, *args.threads]:
            name = str(setting or "default")
            for repeat in range(args.repeats):
                load = {"load_1min": os.getloadavg()[0], "busy_share": round(busy_share(os.sched_getaffinity(0)), 3)}
                run = generate(args, setting)
                emit({"bench": "threads", "hogs": hogs, "setting": name, "repeat": repeat, **load, **run})
                speeds.setdefault(name, []).append(run["tokens_per_s"])
    finally:
        stop_hogs(running)
    return speeds


def main() -> None:
    cpus = available_cpus()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model to run (default: the bundled model)")
    parser.add_argument("--prompt", default="ROMEO:", help="prompt (default: ROMEO:)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens per run (default: 200)")
    parser.add_argument(
        "--hogs", type=int, nargs="+", default=[0, cpus], help=f"busy processes beside the runs (default: 0 {cpus})"
    )
    counts = sorted({1, cpus, *(2**k for k in range(1, cpus.bit_length()) if 2**k < cpus)})
    parser.add_argument(
        "--threads", type=int, nargs="+", default=counts, help=f"explicit counts to run besides the default ({counts})"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per load and setting (default: 1)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds the hogs run before measuring (default: 5)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (default: 600)")
    args = parser.parse_args()

    affinity = sorted(os.sched_getaffinity(0))
    machine = {
        "machine": machine_id(torch.device("cpu")),
        "cpus_available": cpus,
        "physical_cores": physical_cores(affinity),
        "load_1min_before": os.getloadavg()[0],
    }
    emit({"bench": "threads", "measure": "machine", **machine})
    results = {hogs: measure_load(args, hogs) for hogs in args.hogs}
    summary = {}
    for hogs, speeds in results.items():
        medians = {setting: statistics.median(values) for setting, values in speeds.items()}
        best = max(value for setting, value in medians.items() if setting != "default")
        summary[f"hogs={hogs}"] = {
            setting: {"tokens_per_s": value, "vs_best_explicit": round(value / best, 3) if best else None}
            for setting, value in medians.items()
        }
    emit({"bench": "threads", "measure": "summary", **machine, "max_new_tokens": args.max_new_tokens, **summary})


if __name__ == "__main__":
    main()
