"""A real `accelerate launch` of two CPU processes (gloo DDP) on one machine, one output directory shared by both,
running a few training steps of a tiny model. (Two machines without a shared filesystem: test_two_nodes.py.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch
from conftest import free_port
from safetensors.torch import load_file
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)


def test_accelerate_launch_two_processes(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    args = tiny_run_args(corpus, out, max_steps=4, save_interval=4, eval_interval=4, log_interval=2)[1:]
    # --multi_gpu on a machine without GPUs starts gloo processes (MULTI_CPU); --cpu would start only one
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, "-m", "spikegpt.train", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2" in done.stderr and "MULTI_CPU" in done.stderr
        assert (out / "checkpoint-4" / f"random_states_{rank}.pkl").is_file()  # accelerate's save_state: each RNG
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["tokens"] == 4 * 2 * 4 * 16  # steps x processes x batch x ctx
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert math.isfinite(records[-1]["val_loss"])
    # the ranks drew different data (their RNG and data shards differ), yet DDP kept one set of weights
    rank0, rank1 = (torch.load(out / "checkpoint-4" / f"random_states_{r}.pkl", weights_only=False) for r in (0, 1))
    assert not torch.equal(rank0["torch_manual_seed"], rank1["torch_manual_seed"])
    assert "do not share" not in done.stderr  # one directory seen by both: one copy of the checkpoint
    assert load_file(out / "model.safetensors").keys()
