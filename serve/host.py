"""``ModelHost``: a served model, its tokenizer and engine worker, and its state; ``ModelHosts``: the served models by
name (one or several), routing requests by their "model", and the state ``/health`` and ``/ready`` report.

The models load in the background after the server starts, so ``/ready`` answers 503 (``loading``) at once and
200 when every model can serve; a model's endpoints answer 503 until it is loaded. On SIGTERM the hosts drain:
``/ready`` and new requests get 503 while the requests in flight finish (or are ended at the grace).

Each model has its own engine (its own thread, batch, queue and prefix-state cache) and limits, so one model's
overload (429) or failure never reaches another's requests. Models served together are first checked to fit in
memory together (weights and state-cache bounds), before any loads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from spikegpt.energy import resolve_profile
from spikegpt.hub.checkpoint import check_memory_together, estimated_weight_bytes, load_model
from spikegpt.hub.tokenizer import CHAT_TEMPLATE
from spikegpt.modeling.model import SpikeGPTForCausalLM
from spikegpt.runtime.engine import Engine
from spikegpt.threads import apply_threads

from .errors import APIError, invalid, shutting_down
from .formats import TokenTexts
from .metrics import ModelMetrics, ServerMetrics
from .protocol import ServerLimits
from .settings import ServeSettings, SettingsError
from .templating import ChatTemplateRenderer
from .worker import EngineWorker

logger = logging.getLogger(__name__)

HTTP_CPUS = 1  # CPUs the default thread count leaves to the event loop (parsing, streaming) beside the arithmetic

Loader = Callable[[ServeSettings], tuple[SpikeGPTForCausalLM, PreTrainedTokenizerFast]]


def load_checkpoint(settings: ServeSettings) -> tuple[SpikeGPTForCausalLM, PreTrainedTokenizerFast]:
    return load_model(settings.model, settings.device, settings.dtype, settings.weight_bits)


class ModelHost:
    def __init__(
        self,
        settings: ServeSettings,
        metrics: ModelMetrics,
        loader: Loader = load_checkpoint,
        on_load_error: Callable[[Exception], None] | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.model_name = settings.model_name
        self.created = int(time.time())
        self.loader = loader
        self.on_load_error = on_load_error
        self.status = "loading"  # then "ready", "failed" or "shutting_down"
        self.error: str | None = None
        self.energy_profile = resolve_profile(settings.energy_profile)
        self.chat_template = _read_chat_template(settings.chat_template)
        self.model: SpikeGPTForCausalLM | None = None
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.token_texts: TokenTexts | None = None
        self.worker: EngineWorker | None = None
        self.renderer: ChatTemplateRenderer | None = None  # the chat template's, once the tokenizer is loaded
        self.limits: ServerLimits | None = None  # what requests are validated against, once the model is loaded

    @property
    def config(self):
        return self.model.config

    def spiking(self) -> dict:
        """How to read the model's spike counts (the model card's ``spiking``): where the spikes are, the sites in
        the order of every list of counts, and the values each site produces per token (count / (tokens * width)
        is a firing rate)."""
        layout = self.model.layout
        return {
            "placement": layout.placement,
            "sites": list(layout.sites),
            "site_width": layout.site_width,
            "n_layer": layout.n_layer,
        }

    async def load(self) -> None:
        started = time.monotonic()
        try:
            threads = await asyncio.to_thread(apply_threads, self.settings.threads, HTTP_CPUS)
            model, tokenizer = await asyncio.to_thread(self.loader, self.settings)
            if self.chat_template is not None:
                tokenizer.chat_template = self.chat_template
            engine = await asyncio.to_thread(Engine, model, tokenizer, self.settings.engine_config())
            if engine.cache is not None:
                self.metrics.watch_state_cache(engine.cache.stats)
            await asyncio.to_thread(engine.warm_up)
        except Exception as e:
            self.fail(e)
            return
        self.model, self.tokenizer, self.token_texts = model, tokenizer, TokenTexts(tokenizer)
        self.renderer = self._chat_renderer(tokenizer)
        self.worker = EngineWorker(engine, self.settings.max_queue, self.metrics)
        s = self.settings
        self.limits = ServerLimits(model.config.vocab_size, s.max_prompt_tokens, s.max_tokens_cap, self.worker.capacity)
        self.worker.start()
        if self.status == "loading":
            self.status = "ready"
        c = model.config
        shape = f"{c.n_layer} layers, width {c.n_embd}, vocabulary {c.vocab_size}"
        logger.info(
            "serving %s (%s) on %s with %d CPU threads, up to %d sequences per batch; ready in %.1f s",
            self.model_name,
            shape,
            self.settings.device,
            threads,
            self.settings.max_batch,
            time.monotonic() - started,
        )

    def fail(self, error: Exception, report: bool = True) -> None:
        """The model cannot be served: ``/health`` says why; with ``report``, so do the log and ``on_load_error``."""
        self.status, self.error = "failed", f"{type(error).__name__}: {error}"
        if not report:
            return
        logger.error("cannot serve the model %s: %s", self.model_name, self.error)
        if self.on_load_error is not None:
            self.on_load_error(error)

    def require_ready(self) -> None:
        """Raise the 503 that answers a request arriving before the model is ready or after shutdown began."""
        if self.status == "ready":
            return
        if self.status == "shutting_down":
            raise shutting_down()
        loading = self.status == "loading"
        message = "the model is still loading; retry shortly" if loading else "the model failed to load"
        raise APIError(503, message, type="service_unavailable", code=f"model_{self.status}")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise model_not_found(name, [self.model_name])

    def begin_shutdown(self) -> None:
        """Stop taking requests; those in flight get ``shutdown_grace`` seconds to finish, then are ended."""
        if self.status == "shutting_down":
            return
        self.status = "shutting_down"
        if self.worker is not None:
            self.worker.accepting = False
            grace = self.settings.shutdown_grace
            logger.info("shutting down: %d sequences in flight get %.0f s to finish", self.worker.outstanding, grace)
            asyncio.get_running_loop().call_later(grace, self._end_requests_in_flight)

    def _end_requests_in_flight(self) -> None:
        self.worker.abort_all()
        if self.renderer is not None:
            self.renderer.abort()  # a render may run up to its own limit, which may be longer than the grace

    async def drained(self, poll: float = 0.02) -> None:
        """Return once no sequence is left in the engine (``begin_shutdown`` ends them all at the grace)."""
        while self.worker is not None and self.worker.outstanding:
            await asyncio.sleep(poll)

    async def close(self) -> None:
        self.status = "shutting_down"
        if self.renderer is not None:
            await self.renderer.close()
        if self.worker is not None:
            await self.worker.stop()

    def _chat_renderer(self, tokenizer: PreTrainedTokenizerFast) -> ChatTemplateRenderer:
        """The renderer of the chat template the server uses: ``--chat-template``'s (already set on the tokenizer),
        else the tokenizer's own, else SpikeGPT's format; with the special tokens ``apply_chat_template`` passes."""
        s = self.settings
        if s.chat_template is not None:
            name = f"the chat template {Path(s.chat_template).name!r}"
        else:
            name = f"the chat template of {self.model_name!r}"
        return ChatTemplateRenderer(
            tokenizer.get_chat_template() if tokenizer.chat_template else CHAT_TEMPLATE,
            tokenizer.special_tokens_map,
            name,
            timeout=s.chat_template_timeout,
            max_chars=s.chat_template_max_chars,
            max_input_bytes=s.max_body_bytes,
        )


def model_not_found(name: str, served: list[str]) -> APIError:
    return APIError(
        404,
        f"the model {name!r} does not exist; this server serves {', '.join(repr(n) for n in served)}",
        type="not_found_error",
        param="model",
        code="model_not_found",
    )


class ModelHosts:
    """The served models by name, in the order they were given: ``route`` finds a request's, and the lifecycle
    (load, drain, close) and the state ``/health`` and ``/ready`` report cover all of them."""

    def __init__(
        self,
        settings: ServeSettings,
        loader: Loader = load_checkpoint,
        on_load_error: Callable[[Exception], None] | None = None,
    ):
        self.settings = settings
        views = settings.model_settings()
        self.metrics = ServerMetrics([view.model_name for view in views])
        self.hosts = {
            view.model_name: ModelHost(view, self.metrics.for_model(view.model_name), loader, on_load_error)
            for view in views
        }
        self.first = next(iter(self.hosts.values()))
        # where a request is counted until it names its model (with one model: that model's)
        self.unrouted_metrics = self.metrics.unrouted() if self.several else self.first.metrics

    def __iter__(self):
        return iter(self.hosts.values())

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    @property
    def several(self) -> bool:
        return len(self.hosts) > 1

    @property
    def status(self) -> str:
        """The server's: failed if any model failed to load, else shutting_down, loading while any loads, else ready."""
        statuses = {host.status for host in self}
        for status in ("failed", "shutting_down", "loading"):
            if status in statuses:
                return status
        return "ready"

    @property
    def limits(self) -> ServerLimits | None:
        """What every served model accepts (the least of each limit), once all are loaded; None before."""
        limits = [host.limits for host in self]
        if any(limit is None for limit in limits):
            return None
        return ServerLimits(*(min(values) for values in zip(*(astuple(limit) for limit in limits), strict=True)))

    def named(self, name: str) -> ModelHost:
        """The model served as ``name``; 404 otherwise."""
        host = self.hosts.get(name)
        if host is None:
            raise model_not_found(name, self.names)
        return host

    def route(self, name: object) -> ModelHost:
        """The host of a request that names the model ``name`` (None: it names none). With one model, that model
        whatever the name (the route checks the name once the body is valid, ``ModelHost.check_model``); with
        several, the one named, which a request must name."""
        if not self.several:
            return self.first
        if isinstance(name, str):
            return self.named(name)
        served = ", ".join(repr(n) for n in self.names)
        raise invalid(f"model: name the model to use; this server serves {served}", "model")

    async def load(self) -> None:
        """Load every model in turn (each serves as soon as it is loaded); several are first checked to fit in
        memory together."""
        if self.several:
            try:
                await asyncio.to_thread(self._check_memory)
            except Exception as e:  # none can load: each says why, the error is reported once
                for host in self:
                    host.fail(e, report=host is self.first)
                return
        for host in self:
            await host.load()

    def _check_memory(self) -> None:
        needs = {}
        for host in self:
            s = host.settings
            needs[host.model_name] = estimated_weight_bytes(s.model, s.dtype) + (s.state_cache_mb << 20)
        check_memory_together(needs, self.settings.device)

    def begin_shutdown(self) -> None:
        for host in self:
            host.begin_shutdown()

    async def drained(self) -> None:
        for host in self:
            await host.drained()

    async def close(self) -> None:
        for host in self:
            await host.close()


def _read_chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SettingsError(f"cannot read the chat template {path}: {e.strerror or e}") from e
