"""``ServeSettings``: every knob of the server, from ``spikegpt serve``'s flags or ``SPIKEGPT_*`` environment variables.

Each field ``name`` can be set by the variable ``SPIKEGPT_<NAME>`` (``SPIKEGPT_MAX_BATCH=8``,
``SPIKEGPT_CORS_ORIGINS=https://a.example,https://b.example``, ``SPIKEGPT_BATCH_INVARIANT=false``); a flag beats
the variable, which beats the default. The app factory (``spikegpt.serve.app:create_app``) reads only the
variables, so any ASGI server can run it.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from spikegpt.errors import ConfigError, DecodeModeError, SpikeGPTError
from spikegpt.quant.grids import check_weight_bits
from spikegpt.runtime.engine import EngineConfig

ENV_PREFIX = "SPIKEGPT_"
BUNDLED_MODEL_NAME = "spikegpt-shakespeare"


class SettingsError(SpikeGPTError, ValueError):
    """A server setting is invalid."""


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None  # None: the bundled model
    served_model_name: str | None = None  # None: derived from `model`
    device: str = "cpu"
    dtype: str = "auto"
    weight_bits: int | None = None  # quantize the weights after loading (spikegpt.quant.grids); None: as stored
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = EngineConfig.max_batch
    max_queue: int = 64
    max_prompt_tokens: int = 4096
    max_tokens_cap: int = 1024
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    chat_template: str | None = None  # a Jinja template file replacing the tokenizer's
    energy_profile: str | None = None  # None: the energy module's default profile
    threads: int | None = None  # None: half the CPUs this process may use (available_cpus), at least one
    # the engine's options (spikegpt.runtime.engine.EngineConfig defines them and their defaults)
    batch_invariant: bool = EngineConfig.batch_invariant
    compile: bool = EngineConfig.compile  # torch.compile the decoding step (needs a C++ compiler)
    decode: str = EngineConfig.decode  # the decoding step's products: auto, dense or sparse
    prefill_chunk: int = EngineConfig.prefill_chunk  # tokens per prompt per prefill call (the cache's granularity)
    prefill_rows: int = 4  # prompts per prefill call: always 4 rows in a server (the engine's default is fewer
    # when max_batch is below 4)
    state_cache_mb: int = 256  # prefix-state cache in memory; 0 turns it off
    state_cache_dir: str | None = None  # keep cached states here too, across restarts
    state_cache_dir_mb: int = 1024  # the most that directory holds of this model's states
    shutdown_grace: float = 30.0
    access_log: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        at_least_one = (
            "max_batch",
            "max_prompt_tokens",
            "max_tokens_cap",
            "max_body_bytes",
            "threads",
            "prefill_chunk",
            "prefill_rows",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in [0, 65535] (0: any free port), got {self.port}")
        if self.max_queue < 0:
            raise SettingsError(f"max_queue must be 0 or more, got {self.max_queue}")
        if self.state_cache_mb < 0 or self.state_cache_dir_mb < 0:
            raise SettingsError("state_cache_mb and state_cache_dir_mb must be 0 or more")
        if self.state_cache_dir is not None and not self.state_cache_mb:
            raise SettingsError("state_cache_dir needs the cache on (state_cache_mb > 0)")
        if self.shutdown_grace < 0:
            raise SettingsError(f"shutdown_grace must be 0 or more seconds, got {self.shutdown_grace}")
        try:
            if self.weight_bits is not None:
                check_weight_bits(self.weight_bits)
            self.engine_config()
        except (ConfigError, DecodeModeError) as e:
            raise SettingsError(str(e)) from e
        if self.api_key is not None and not self.api_key:
            raise SettingsError("api_key must not be empty (leave it unset to serve without a key)")

    def engine_config(self) -> EngineConfig:
        """The options of the engine that serves the model."""
        return EngineConfig(
            max_batch=self.max_batch,
            batch_invariant=self.batch_invariant,
            prefill_chunk=self.prefill_chunk,
            prefill_rows=self.prefill_rows,
            compile=self.compile,
            decode=self.decode,
            state_cache_bytes=self.state_cache_mb << 20,
            state_cache_dir=self.state_cache_dir,
            state_cache_dir_bytes=self.state_cache_dir_mb << 20,
        )

    @property
    def model_name(self) -> str:
        """The name clients put in "model": the served name, else the model directory's name or the Hub id."""
        if self.served_model_name:
            return self.served_model_name
        if self.model is None:
            return BUNDLED_MODEL_NAME
        path = Path(self.model).expanduser()
        return path.resolve().name if path.exists() else self.model

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, available_cpus() // 2)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServeSettings:
        """Settings from ``SPIKEGPT_*`` variables, then ``overrides`` (given flags) on top."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, hints[f.name])
        values.update(overrides)
        return cls(**values)


CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def _parse(name: str, raw: str, hint) -> object:
    kinds = set(typing.get_args(hint)) or {hint}
    variable = ENV_PREFIX + name.upper()
    if raw == "" and type(None) in kinds:
        return None
    try:
        if bool in kinds:
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("expected true or false")
            return lowered in ("1", "true", "yes", "on")
        if int in kinds:
            return int(raw)
        if float in kinds:
            return float(raw)
    except ValueError as e:
        raise SettingsError(f"{variable}={raw!r}: {e}") from e
    if hint == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw
