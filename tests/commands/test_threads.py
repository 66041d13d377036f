"""One thread policy for every entry point (``spikegpt.threads``): its decisions for given machines, every command's
``--threads`` applied before the command runs, the library's engine and loader, and invalid counts refused.

The suite runs with ``OMP_NUM_THREADS`` set (tests/conftest.py), so that nothing depends on the load of the
moment; the tests of the default remove it. Where a test needs a machine with a given load, it replaces
``measure_cpus`` (the one function that reads the real machine) by that machine, as its docstring says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import torch_threads

from spikegpt import threads
from spikegpt.cli import main
from spikegpt.errors import ThreadsError
from spikegpt.hub.checkpoint import load_model
from spikegpt.runtime.engine import Engine, EngineConfig
from spikegpt.threads import (
    MAX_DEFAULT_THREADS,
    CpuView,
    apply_threads,
    available_cpus,
    busy_share,
    decide_threads,
    default_threads,
    omp_num_threads,
    physical_cores,
)


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """Each test starts as a fresh process would (no count chosen yet) and leaves torch's count as it found it."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    yield
    torch.set_num_threads(before)


def a_machine(monkeypatch, view: CpuView) -> None:
    """Replace the machine the default is measured on by ``view`` (a real load cannot be ordered up in a test),
    with no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "measure_cpus", lambda environ=None: view)


@pytest.mark.parametrize(
    ("view", "reserve", "expected"),
    [
        (CpuView(cpus=2, cores=2, busy=0.0), 0, 2),  # a quiet laptop: every core
        (CpuView(cpus=2, cores=2, busy=2.0), 0, 1),  # both cores taken: one thread, never a crowd
        (CpuView(cpus=2, cores=2, busy=1.0), 0, 1),
        (CpuView(cpus=2, cores=2, busy=0.3), 0, 1),  # a CPU 30 % busy does not count as free
        (CpuView(cpus=2, cores=2, busy=0.2), 0, 2),  # 80 % idle does
        (CpuView(cpus=2, cores=2, busy=7.5), 0, 1),  # overloaded
        (CpuView(cpus=8, cores=4, busy=0.0), 0, 4),  # hyper-threads: one thread per physical core
        (CpuView(cpus=16, cores=16, busy=12.0), 0, 4),
        (CpuView(cpus=64, cores=32, busy=0.0), 0, MAX_DEFAULT_THREADS),  # a big quiet machine: the cap
        (CpuView(cpus=16, cores=16, busy=0.0, processes=4), 0, 4),  # four local processes share the cores
        (CpuView(cpus=4, cores=4, busy=0.0, processes=8), 0, 1),
        (CpuView(cpus=2, cores=2, busy=0.0), 1, 1),  # the server keeps a CPU for HTTP
        (CpuView(cpus=1, cores=1, busy=0.0), 1, 1),
        (CpuView(cpus=16, cores=16, busy=0.0), 1, 8),
        (CpuView(cpus=6, cores=6, busy=1.0), 1, 4),
    ],
)
def test_the_default_counts_the_free_cores(view, reserve, expected):
    assert default_threads(view, reserve) == expected


def test_a_count_asked_for_beats_omp_num_threads_which_beats_the_default(monkeypatch):
    a_machine(monkeypatch, CpuView(cpus=4, cores=4, busy=0.0))
    assert decide_threads(None)[0] == 4
    assert decide_threads(None, environ={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    assert decide_threads(2, environ={"OMP_NUM_THREADS": "3"}) == (2, "asked for")
    assert decide_threads(6)[0] == 6  # more than the cores, when asked for (with a warning when applied)


@pytest.mark.parametrize(
    ("value", "expected"), [("4", 4), ("4,2", 4), (" 2 ", 2), ("0", None), ("abc", None), ("", None)]
)
def test_omp_num_threads_is_read_as_openmp_reads_it(value, expected):
    assert omp_num_threads({"OMP_NUM_THREADS": value}) == expected


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_an_invalid_count_is_refused(bad):
    with pytest.raises(ThreadsError, match="threads must be a whole number of at least 1"):
        apply_threads(bad)


def test_hyper_threads_of_one_core_count_once(tmp_path):
    for cpu, core in enumerate([0, 1, 0, 1]):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(f"{core}\n")
        (topology / "physical_package_id").write_text("0\n")
    assert physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert physical_cores([0, 1], tmp_path) == 2
    assert physical_cores([0, 2], tmp_path) == 1
    assert physical_cores([0, 1, 7], tmp_path) == 3  # a CPU without topology: count CPUs


def test_the_busy_share_of_this_machine_is_a_share():
    assert 0.0 <= busy_share(os.sched_getaffinity(0), seconds=0.02) <= 1.0


def test_a_process_decides_once_and_a_count_asked_for_always_applies(monkeypatch):
    a_machine(monkeypatch, CpuView(cpus=4, cores=4, busy=3.0))
    torch.set_num_threads(2)
    assert apply_threads() == 1 and torch.get_num_threads() == 1  # the default on that machine
    a_machine(monkeypatch, CpuView(cpus=4, cores=4, busy=0.0))
    assert apply_threads() == 1 and torch.get_num_threads() == 1  # kept: not measured again
    assert apply_threads(3) == 3 and torch.get_num_threads() == 3
    assert apply_threads() == 3


def test_the_engine_and_the_loader_apply_the_policy_by_default_and_a_count_when_given(monkeypatch, tiny_model_dir):
    a_machine(monkeypatch, CpuView(cpus=4, cores=4, busy=3.0))
    torch.set_num_threads(2)
    model, tokenizer = load_model(tiny_model_dir)
    assert torch.get_num_threads() == 1  # the policy, on a busy machine
    Engine(model, tokenizer, EngineConfig(max_batch=1, threads=3))
    assert torch.get_num_threads() == 3
    Engine(model, tokenizer, EngineConfig(max_batch=1))
    assert torch.get_num_threads() == 3  # kept
    load_model(tiny_model_dir, threads=2)
    assert torch.get_num_threads() == 2
    with pytest.raises(ThreadsError):
        Engine(model, tokenizer, EngineConfig(max_batch=1, threads=0))


def test_a_fresh_engine_decides_by_the_policy(monkeypatch, tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, threads=2)
    monkeypatch.setattr(threads, "_chosen", None)  # as a library user's process that never loaded through us
    a_machine(monkeypatch, CpuView(cpus=8, cores=8, busy=5.0))
    Engine(model, tokenizer, EngineConfig(max_batch=1))
    assert torch.get_num_threads() == 3


# each command, given arguments that fail after the options are read: --threads is applied before anything runs
COMMANDS = {
    "generate": ["generate", "--model", "/no/such/model", "--prompt", "x"],
    "energy": ["energy", "--model", "/no/such/model", "--prompt", "x"],
    "eval": ["eval", "--model", "/no/such/model", "--dataset", "/no/such/data.txt"],
    "quantize": ["quantize", "--model", "/no/such/model", "--weight-bits", "8", "{tmp}/out"],
    "convert": ["convert", "/no/such/original.pth", "{tmp}/out"],
    "train": ["train", "--batch-size", "0", "--output-dir", "{tmp}/run"],
    "serve": ["serve", "--model", "/no/such/model", "--port", "0"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_applies_its_threads_flag(command, tmp_path, capsys):
    torch.set_num_threads(1)
    argv = [word.format(tmp=tmp_path) for word in COMMANDS[command]]
    assert main([*argv, "--threads", "3"]) == 1
    assert torch_threads() == 3  # serve sets it in a thread of its own
    assert f"spikegpt {command}: error:" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_threads_in_its_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--threads N CPU threads for the model's arithmetic" in help_text
    assert "OMP_NUM_THREADS when set" in help_text


@pytest.mark.parametrize("command", ["generate", "energy", "eval", "serve"])
@pytest.mark.parametrize("bad", ["0", "-2"])
def test_an_invalid_threads_flag_is_one_line(command, bad, capsys):
    argv = [word.format(tmp="/tmp") for word in COMMANDS[command]]
    assert main([*argv, "--threads", bad]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"spikegpt {command}:")]
    assert len(errors) == 1
    assert re.search(rf"threads must be (a whole number of )?at least 1, got {bad}", errors[0])


def generate_in_a_process(tiny_model_dir, *flags: str, env: dict) -> str:
    command = [sys.executable, "-m", "spikegpt.cli", "generate", "--model", str(tiny_model_dir), "--prompt", "ab"]
    result = subprocess.run(
        [*command, "--max-new-tokens", "3", "--temperature", "0", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_real_generate_process_computes_with_the_threads_it_was_given(tiny_model_dir):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    assert generate_in_a_process(tiny_model_dir, "--threads", "1", env=env).endswith(", 1 CPU thread]")
    assert generate_in_a_process(tiny_model_dir, "--threads", "3", env=env).endswith(", 3 CPU threads]")
    assert generate_in_a_process(tiny_model_dir, env={**env, "OMP_NUM_THREADS": "2"}).endswith(", 2 CPU threads]")
    default = int(re.search(r", (\d+) CPU threads?\]$", generate_in_a_process(tiny_model_dir, env=env)).group(1))
    assert 1 <= default <= min(available_cpus(), MAX_DEFAULT_THREADS)
