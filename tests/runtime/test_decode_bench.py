"""The decoding benchmarks run and print what they promise, as real processes on tiny models (their figures mean
nothing at these sizes, and no test reads a timing): ``bench/decode.py --quick --placement inputs`` (fp32, int8 and
int8 event-driven steps, the peers, generate()), ``bench/int8_decode.py`` (the products one at a time) and
``bench/crossover.py --dtype int8``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
PEERS = {"rwkv_package_fp32", "rwkv_package_fp32i8", "transformers", "llama_cpp_q8_0"}


def run_bench(script: str, *args: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, cwd=BENCH.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]  # every line is one JSON object


def test_decode_placement_prints_every_mode_peer_and_the_summary():
    records = run_bench("decode.py", "--quick", "--placement", "inputs")
    assert records[0]["measure"] == "run" and records[0]["machine"].startswith("cpu:")
    steps = [r for r in records if r["measure"] == "decode_step"]
    assert {r["batch"] for r in steps} == {1, 2}
    for r in steps:
        assert set(r["modes"]) == {"fp32", "int8", "int8_sparse", "int8_auto"}
        for figures in r["modes"].values():
            assert figures["tok_s"] > 0 and figures["bound_tok_s"] > 0 and figures["fraction_of_bound"] > 0
        read = {mode: figures["bytes_per_token"] for mode, figures in r["modes"].items()}
        assert read["int8"] < read["fp32"] / 3  # a byte a weight instead of four
        assert read["int8_sparse"] < read["int8"]  # only the active rows of the candidates (25% active)
    peers = {r["peer"]: r for r in records if r["measure"] == "peer"}
    assert set(peers) == PEERS
    assert all("tok_s" in p or p["missing"] for p in peers.values())
    (generate,) = [r for r in records if r["measure"] == "generate"]
    assert generate["generate_tok_s"] > 0 and generate["step_tok_s"] > 0
    summary = records[-1]
    assert summary["measure"] == "summary"
    row = summary["sizes"]["2x64"]["threads"]["1"]
    for key in ("fraction_of_bound", "vs_rwkv_package", "int8_event_vs_int8_dense"):
        assert key in row["b1"], key
    assert set(row["b1"]["fraction_of_bound"]) == {"fp32", "int8", "int8_sparse", "int8_auto"}
    assert set(row["peers"]) == PEERS


def test_int8_products_and_their_crossover_print_json():
    records = run_bench("int8_decode.py", "--sizes", "1x64", "--vocab", "96", "--batches", "1", "2", "--threads",
                        "1", "--repeats", "1", "--working-set-mb", "1")  # fmt: skip
    products = [r for r in records if r["measure"] == "product"]
    assert len(products) == 4 * 2  # d→d, d→4d, 4d→d, the head; two batch sizes
    for r in products:
        assert {"fp32", "int8", "int8_counts", "torch_linear_dynamic", "int8_event_0.1"} <= set(r["products"])
    assert records[-1]["measure"] == "summary"
    crossover = run_bench("crossover.py", "--dtype", "int8", "--sizes", "1x64", "--vocab", "96", "--repeats", "1",
                          "--working-set-mb", "1", "--dry-run")  # fmt: skip
    summary = crossover[-1]
    assert summary["measure"] == "summary" and "written" not in summary
    assert all(key.startswith("int8/") and 0 <= value <= 1 for key, value in summary["crossovers"].items())
