"""How many threads torch's CPU arithmetic uses: one policy for every entry point.

Every command (``generate``, ``eval``, ``energy``, ``serve``, ...), the server's app and the library's ``Engine``
and ``load_model`` set torch's thread count here. Torch's own default is one thread per physical core, whatever
else runs on them. Its OpenMP workers meet at a barrier after every parallel operation, so while another process
holds one of those cores, each operation waits until the operating system schedules the worker it pushed off, and
the workers that arrived spin meanwhile, taking more of the cores the late one needs. A decoding step is hundreds
of small operations: beside a busy process, decoding falls from hundreds of tokens/s to a handful
(``bench/threads.py`` measures it). A thread count no larger than the cores that are actually free avoids it.

The policy (``decide_threads``), first match wins:

1. a count asked for (``--threads N``, ``threads=N``);
2. ``OMP_NUM_THREADS``, when set: the operator's choice for every OpenMP program (``torchrun`` sets it to 1 for the
   processes of a distributed run);
3. the default (``default_threads``): the CPUs this process may use (affinity mask and cgroup quota,
   ``available_cpus``) less those other work keeps busy (``busy_share``: the larger of the last minute's load
   average and a short sample of ``/proc/stat``, as a share of the machine), counting a CPU as free only when at
   least 3/4 of it is idle; no more than the physical cores among them (hyper-threads share one core's arithmetic
   units); divided between the processes of a local distributed run (``LOCAL_WORLD_SIZE``); less ``reserve`` (the
   server keeps one CPU for HTTP); at most ``MAX_DEFAULT_THREADS``; at least 1.

A process decides once: a later call that asks for no count keeps the count already set here (so ``load_model``
then ``Engine`` measure the machine once, and a count given to one holds for the other); a count asked for always
applies.

Only the intra-op count is set (``torch.set_num_threads``, which sets OpenMP's and MKL's for torch's operations, in
every thread of the process). ``OMP_NUM_THREADS`` itself is read once, by the OpenMP runtime as torch is imported:
too early for a library to set. Torch's inter-op pool runs ``torch.jit.fork`` tasks only, which nothing here uses,
and its idle threads sleep rather than spin, so it is left as it is.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ThreadsError

logger = logging.getLogger(__name__)

# More threads gain nothing on the small products of a decoding step and give another process more cores on which
# to stall every operation; an explicit --threads goes past it (long prompts, evaluation of a large model).
MAX_DEFAULT_THREADS = 8
FREE_WHEN_IDLE = 0.75  # a CPU counts as free for a thread when at least this share of it is idle
SAMPLE_SECONDS = 0.1  # how long /proc/stat is watched: ten clock ticks per CPU

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")

_chosen: int | None = None  # the count this process set through apply_threads


@dataclass(frozen=True)
class CpuView:
    """What the default thread count is decided from: the CPUs this process may use, the physical cores among
    them, how many of them other work keeps busy, and how many processes of one local run share them."""

    cpus: int
    cores: int
    busy: float
    processes: int = 1


def default_threads(view: CpuView, reserve: int = 0) -> int:
    """The default thread count for ``view`` (the module docstring's third rule), keeping ``reserve`` CPUs free for
    the process's other threads."""
    free = math.floor(view.cpus - view.busy + (1 - FREE_WHEN_IDLE)) - reserve
    per_process = min(free, view.cores) // max(1, view.processes)
    return max(1, min(per_process, MAX_DEFAULT_THREADS))


def check_threads(count: object) -> int:
    """``count`` if it is a whole number of at least 1; ThreadsError otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ThreadsError(f"threads must be a whole number of at least 1, got {count!r}")
    return count


def omp_num_threads(environ: Mapping[str, str]) -> int | None:
    """The count ``OMP_NUM_THREADS`` sets (its first level, as OpenMP reads "4,2"), or None when unset or not a
    count (OpenMP ignores such a value too)."""
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else None


def decide_threads(
    requested: int | None = None, reserve: int = 0, environ: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """The thread count the policy gives, and why (for the log)."""
    if requested is not None:
        return check_threads(requested), "asked for"
    environ = os.environ if environ is None else environ
    from_env = omp_num_threads(environ)
    if from_env is not None:
        return from_env, "OMP_NUM_THREADS"
    view = measure_cpus(environ)
    return default_threads(view, reserve), (
        f"default: {view.cpus} CPUs ({view.cores} cores) of which {view.busy:.1f} busy"
        + (f", {view.processes} processes" if view.processes > 1 else "")
        + (f", {reserve} kept free" if reserve else "")
    )


def apply_threads(requested: int | None = None, reserve: int = 0) -> int:
    """Set torch's CPU thread count by the policy and return it. Without ``requested``, a count this process
    already set here is kept."""
    global _chosen
    if requested is None and _chosen is not None:
        return _chosen
    count, why = decide_threads(requested, reserve)
    usable = available_cpus()
    if count > usable:
        logger.warning(
            "%d CPU threads on the %d CPUs this process may use: under load every operation waits for the threads "
            "that are not running",
            count,
            usable,
        )
    torch.set_num_threads(count)
    _chosen = count
    logger.debug("torch computes with %d CPU threads (%s)", count, why)
    return count


def measure_cpus(environ: Mapping[str, str] | None = None) -> CpuView:
    """This machine as the default thread count sees it now."""
    environ = os.environ if environ is None else environ
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cpus = available_cpus()
    processes = environ.get("LOCAL_WORLD_SIZE", "1")
    return CpuView(
        cpus=cpus,
        cores=min(cpus, physical_cores(allowed)),
        busy=busy_share(allowed) * cpus,
        processes=int(processes) if processes.isdigit() and int(processes) >= 1 else 1,
    )


def busy_share(cpus: Iterable[int], seconds: float = SAMPLE_SECONDS) -> float:
    """The share of the machine other work keeps busy, 0 to 1: the larger of the last minute's load average per
    CPU (slow to see new work, but it sees work that pauses) and the share of ``cpus`` not idle during ``seconds``
    of ``/proc/stat`` (sees work that just started)."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        load = 0.0
    cpus = list(cpus)
    before = _cpu_times(cpus)
    sampled = 0.0
    if before:
        time.sleep(seconds)
        after = _cpu_times(cpus)
        busy = total = 0
        for cpu, (busy_after, total_after) in after.items():
            busy_before, total_before = before.get(cpu, (busy_after, total_after))
            busy, total = busy + busy_after - busy_before, total + total_after - total_before
        sampled = busy / total if total > 0 else 0.0
    return min(1.0, max(load, sampled))


def _cpu_times(cpus: list[int], stat: Path = Path("/proc/stat")) -> dict[int, tuple[int, int]]:
    """CPU → (busy ticks, all ticks) since boot, from ``/proc/stat`` (empty where there is none). Idle and
    waiting for I/O count as idle; guest time is already inside user time."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return {}
    wanted, times = {f"cpu{cpu}" for cpu in cpus}, {}
    for line in lines:
        name, *fields = line.split()
        if name in wanted and len(fields) >= 8:
            ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def physical_cores(cpus: Iterable[int], topology: Path = CPU_TOPOLOGY) -> int:
    """The physical cores ``cpus`` sit on (hyper-threads of one core count once), from sysfs; the number of
    ``cpus`` where the topology cannot be read."""
    cpus = list(cpus)
    cores = set()
    for cpu in cpus:
        package = _read(topology / f"cpu{cpu}" / "topology" / "physical_package_id")
        core = _read(topology / f"cpu{cpu}" / "topology" / "core_id")
        if not core:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs this process's cgroup may use (quota / period), or None without a limit: cgroup v2's ``cpu.max``
    in the process's own group and every group above it (the tightest wins), else cgroup v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. In a container these are the container's limits (docker
    ``--cpus``, Kubernetes ``resources.limits.cpu``)."""
    limits = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    group = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if group is not None:  # cgroup v2
        folder = root / group.lstrip("/")
        while True:
            fields = _read(folder / "cpu.max").split()
            if len(fields) == 2 and fields[0] != "max":
                limits.append(int(fields[0]) / int(fields[1]))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
            limits.append(int(quota) / int(period))
            break
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may use: the cores it may run on (``os.sched_getaffinity``, which ``taskset`` and
    ``docker --cpuset-cpus`` narrow), capped by its cgroup's CPU quota rounded up; ``os.cpu_count`` sees neither."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cores, math.ceil(limit))) if limit is not None else max(1, cores)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
