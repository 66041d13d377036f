"""The default thread count (spikegpt.threads) follows the CPUs a container may use: cgroup v2 and v1 quotas (written
as a cgroup filesystem would show them, in a temporary directory) and the affinity mask; the server keeps one for
HTTP."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import torch_threads
from serve_helpers import run_server, tiny_settings

from spikegpt import threads
from spikegpt.threads import CpuView, available_cpus, cgroup_cpu_limit


def v2(tmp_path, limits: dict[str, str], group: str = "/kubepods/pod1/app"):
    """A cgroup v2 tree: ``limits`` maps a group path to its cpu.max; the process sits in ``group``."""
    root = tmp_path / "cgroup"
    for path, value in limits.items():
        folder = root / path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(value + "\n")
    (root / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{group}\n")
    return root, proc


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"/kubepods/pod1/app": "200000 100000"}, 2.0),
        ({"/kubepods/pod1/app": "150000 100000"}, 1.5),
        ({"/kubepods/pod1/app": "max 100000"}, None),
        ({"/kubepods/pod1/app": "max 100000", "/kubepods/pod1": "50000 100000"}, 0.5),  # a parent's limit counts
        ({"/kubepods/pod1/app": "300000 100000", "/kubepods": "100000 100000"}, 1.0),  # the tightest wins
        ({}, None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, limits, expected):
    root, proc = v2(tmp_path, limits)
    assert cgroup_cpu_limit(root, proc) == expected


def test_a_container_sees_its_own_group_as_the_root(tmp_path):
    root, proc = v2(tmp_path, {"/": "400000 100000"}, group="/")
    assert cgroup_cpu_limit(root, proc) == 4.0


@pytest.mark.parametrize(("quota", "expected"), [("50000", 0.5), ("250000", 2.5), ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, expected):
    root = tmp_path / "cgroup"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:cpu,cpuacct:/\n")
    assert cgroup_cpu_limit(root, proc) == expected


def test_available_cpus_rounds_a_quota_up_and_never_exceeds_the_affinity(tmp_path):
    cores = len(os.sched_getaffinity(0))
    root, proc = v2(tmp_path, {"/kubepods/pod1/app": "50000 100000"})
    assert available_cpus(root, proc) == 1  # half a CPU still gets a thread
    root, proc = v2(tmp_path / "big", {"/kubepods/pod1/app": f"{(cores + 7) * 100000} 100000"})
    assert available_cpus(root, proc) == cores
    root, proc = v2(tmp_path / "none", {})
    assert available_cpus(root, proc) == cores


def test_the_server_keeps_one_cpu_for_http(monkeypatch, tiny_model_dir):
    """A quiet 4-CPU machine stands in for this one (measure_cpus replaced: the test cannot choose the machine's
    load): the default gives the model 3 threads and leaves one to the event loop."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(threads, "measure_cpus", lambda environ=None: CpuView(cpus=4, cores=4, busy=0.0))
    try:
        with run_server(tiny_settings(tiny_model_dir, threads=None)):
            assert torch_threads() == 3
    finally:
        torch.set_num_threads(before)
