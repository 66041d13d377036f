"""A real `accelerate launch` of two CPU processes (gloo DDP) on one machine, one output directory shared by both,
running a few training steps of a tiny model. (Two machines without a shared filesystem: test_two_nodes.py.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)

from spikegpt.cli import main

ACCELERATE = Path(__file__).resolve().parents[2] / "train" / "configs" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "machines"),
    [("single-gpu", "NO", 1), ("multi-gpu", "MULTI_GPU", 1), ("multi-node", "MULTI_GPU", 2), ("fsdp", "FSDP", 1)],
)
def test_the_example_accelerate_configs_are_valid(name, kind, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    from spikegpt.modeling.model import Block

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_machines == machines
    if kind == "FSDP":  # the wrapped unit names a real module of the model
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == Block.__name__


def test_accelerate_launch_two_processes(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    args = tiny_run_args(corpus, out, max_steps=4, save_interval=4, eval_interval=4, log_interval=2)[1:]
    # the shipped multi-GPU config: on a machine without GPUs it starts gloo processes (MULTI_CPU)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "multi-gpu.yaml")]
    launch += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
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
    # one process cannot continue it exactly: a one-line error, before anything is loaded
    assert main([*tiny_run_args(corpus, out, max_steps=6), "--resume"]) == 1
    assert "written by 2 processes; resume it with 2" in capsys.readouterr().err
