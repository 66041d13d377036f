"""``ServeSettings``: every knob of the server, from ``spikegpt serve``'s flags or ``SPIKEGPT_*`` environment variables.

Each field ``name`` can be set by the variable ``SPIKEGPT_<NAME>`` (``SPIKEGPT_MAX_BATCH=8``,
``SPIKEGPT_CORS_ORIGINS=https://a.example,https://b.example``, ``SPIKEGPT_BATCH_INVARIANT=false``); a flag beats
the variable, which beats the default. The app factory (``spikegpt.serve.app:create_app``) reads only the
variables, so any ASGI server can run it.

One server may serve several models (``models``, with ``served_model_names``): each gets its own engine, state cache
and limits, all from the same settings (``model_settings`` gives each model's own view).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
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
    # several models from one server (instead of `model`): each with its own engine, cache and limits; names given
    # once per model, or none (each model's name is derived as `model`'s is)
    models: tuple[str, ...] = ()
    served_model_names: tuple[str, ...] = ()
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
    request_body_timeout: float = 5.0  # seconds a request body may go without a byte before it is dropped (408)
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    chat_template: str | None = None  # a Jinja template file replacing the tokenizer's
    chat_template_timeout: float = 5.0  # seconds one render may take (templates are untrusted: serve.templating)
    chat_template_max_chars: int = 1 << 20  # the longest prompt a render may produce (as large as a body)
    energy_profile: str | None = None  # None: the energy module's default profile
    threads: int | None = None  # None: spikegpt.threads' default, keeping one CPU for HTTP
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
            "chat_template_max_chars",
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
        for name in ("request_body_timeout", "chat_template_timeout"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
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
        self._check_models()

    def _check_models(self) -> None:
        if not self.models:
            if self.served_model_names:
                raise SettingsError("served_model_names needs models (one model: served_model_name)")
            return
        if self.model is not None or self.served_model_name is not None:
            raise SettingsError("give either model (one model) or models (several), not both")
        if self.served_model_names and len(self.served_model_names) != len(self.models):
            raise SettingsError(
                f"give one served model name per model: {len(self.models)} models, {len(self.served_model_names)} names"
            )
        names = [s.model_name for s in self.model_settings()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SettingsError(
                f"two models would be served as {repeated[0]!r}: name each with --served-model-name "
                "(SPIKEGPT_SERVED_MODEL_NAMES)"
            )

    def model_settings(self) -> list[ServeSettings]:
        """One settings object per served model, each with its own ``model`` and ``served_model_name`` (the server's
        other settings, limits included, hold for each model on its own). Models served together keep their cached
        states in a subdirectory of ``state_cache_dir`` each."""
        if not self.models:
            return [self]
        names = self.served_model_names or (None,) * len(self.models)
        views = []
        for model, name in zip(self.models, names, strict=True):
            view = replace(self, model=model, served_model_name=name, models=(), served_model_names=())
            if self.state_cache_dir is not None:
                view = replace(view, state_cache_dir=str(Path(self.state_cache_dir) / _directory_name(view.model_name)))
            views.append(view)
        return views

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
        # one model or several: what the flags name replaces the variables' other form
        for given, other in (("models", ("model", "served_model_name")), ("model", ("models", "served_model_names"))):
            if given in overrides:
                for name in other:
                    values.pop(name, None)
        values.update(overrides)
        return cls(**values)


def _directory_name(model_name: str) -> str:
    """A model's name as one directory name (a Hub id "org/name" becomes "org--name")."""
    return model_name.replace("/", "--").replace("\\", "--")


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
