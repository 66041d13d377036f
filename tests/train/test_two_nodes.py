"""A real two-node run on one machine: two `accelerate launch --num_machines 2 --machine_rank 0|1` launchers over
loopback, one process per node (gloo, MULTI_CPU), each node with its own output directory as machines without a
shared filesystem would have. One run is stopped by SIGKILL mid-step and resumed; it ends bit-identical to a run
that was never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)

KILL_AT_STEP = 4  # after the checkpoint at step 3 and one more step: the resumed run must discard step 4

# the killed run: both processes SIGKILL themselves as they begin step KILL_AT_STEP + 1 (no collective is pending
# then, so both die at the same point instead of one waiting forever on the other)
KILLED = f"""
import os, signal, sys
from spikegpt.cli import main
from spikegpt.train.trainer import Trainer

real_micro_step = Trainer._micro_step

def micro_step(self, *args, **kwargs):
    if self.step == {KILL_AT_STEP}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_micro_step(self, *args, **kwargs)

Trainer._micro_step = micro_step
sys.exit(main(["train", *sys.argv[1:]]))
"""


def launch_two_nodes(root: Path, name: str, corpus: Path, program: list[str], **options) -> list[subprocess.Popen]:
    """Start both nodes of a run; node r writes into ``root/name/node{r}`` and logs to ``root/name/node{r}.log``."""
    port = free_port()
    (root / name).mkdir(exist_ok=True)
    nodes = []
    for rank in (0, 1):
        out = root / name / f"node{rank}"
        args = tiny_run_args(corpus, out, max_steps=6, save_interval=3, eval_interval=0, dropout=0.1,
                             lr_decay_steps=6, cache_dir=root / f"datasets-cache-{rank}", **options)[1:]  # fmt: skip
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2"]
        launch += ["--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
        launch += ["--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
               "HF_DATASETS_CACHE": str(root / f"hf-datasets-{rank}")}  # fmt: skip
        log = open(root / name / f"node{rank}.log", "w")  # noqa: SIM115 (the child holds it; closed with the test)
        nodes.append(subprocess.Popen([*launch, *program, *args], env=env, stdout=log, stderr=subprocess.STDOUT))
    return nodes


def wait_all(nodes: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [node.wait(timeout=max(1.0, deadline - time.monotonic())) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()


def log_of(root: Path, name: str, rank: int) -> str:
    return (root / name / f"node{rank}.log").read_text()


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow  # three two-node runs: about a minute and a half on two busy cores
def test_two_nodes_killed_and_resumed_match_an_uninterrupted_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    killer = tmp_path / "killed_at_step.py"
    killer.write_text(KILLED)
    started = time.monotonic()
    # the uninterrupted run and the one to be killed, side by side
    straight = launch_two_nodes(tmp_path, "straight", corpus, ["-m", "spikegpt.train"])
    killed = launch_two_nodes(tmp_path, "split", corpus, [str(killer)])
    codes = wait_all(straight + killed)
    assert codes[:2] == [0, 0], log_of(tmp_path, "straight", 0)[-3000:] + log_of(tmp_path, "straight", 1)[-3000:]
    assert all(code != 0 for code in codes[2:])
    for rank in (0, 1):
        log = log_of(tmp_path, "split", rank)
        assert "Signal 9 (SIGKILL)" in log or "exitcode  : -9" in log, log[-3000:]
    first_phase = time.monotonic() - started
    split = tmp_path / "split"
    for rank in (0, 1):
        node = split / f"node{rank}"
        # each node saved its own whole checkpoint, its own process's RNG only: nothing is read across nodes
        assert sorted(p.name for p in node.glob("checkpoint-*")) == ["checkpoint-3"]
        files = {p.name for p in (node / "checkpoint-3").iterdir()}
        assert {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", "config.json"} <= files
        assert {f for f in files if f.startswith("random_states")} == {f"random_states_{rank}.pkl"}
        assert f"process {rank} of 2 on cpu" in log_of(tmp_path, "split", rank)
    assert "MULTI_CPU" in log_of(tmp_path, "split", 0)
    assert "do not share" in log_of(tmp_path, "split", 0)

    resumed_at = time.monotonic()
    resumed = launch_two_nodes(tmp_path, "split", corpus, ["-m", "spikegpt.train"], resume=True)
    assert wait_all(resumed) == [0, 0], log_of(tmp_path, "split", 0)[-3000:] + log_of(tmp_path, "split", 1)[-3000:]
    assert "resumed from" in log_of(tmp_path, "split", 1)
    second_phase = time.monotonic() - resumed_at

    # node 0 holds the final model (a Hugging Face directory) and the metrics; node 1 only its checkpoints
    reference = load_file(tmp_path / "straight" / "node0" / "model.safetensors")
    result = load_file(split / "node0" / "model.safetensors")
    assert reference.keys() == result.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, result[name]), name
    assert losses(split / "node0") == losses(tmp_path / "straight" / "node0")
    assert not (split / "node1" / "model.safetensors").exists()
    assert sorted(p.name for p in (split / "node1").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    print(f"two-node runs: straight + killed {first_phase:.1f} s, resumed {second_phase:.1f} s")
