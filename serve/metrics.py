"""Prometheus metrics, named after vLLM's (``vllm:time_to_first_token_seconds`` → ``spikegpt:...``) so existing
dashboards need only a prefix change, plus the spiking model's own: firing rate and estimated energy.

Each app has its own registry, so several apps in one process (tests) never share counters. A server of several
models labels every series with its ``model`` (one model's series carry no such label, as before); each model's
host, worker and requests update their own series through ``ModelMetrics``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from spikegpt.runtime.state_cache import CacheStats

PREFIX = "spikegpt:"

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
RATE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)

# requests_total outcomes: how each generation request ended, from the client's point of view
OUTCOMES = ("success", "invalid", "rejected", "cancelled", "error")


class ServerMetrics:
    """The server's metric families; ``for_model`` gives one served model's series."""

    def __init__(self, model_names: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.labelled = len(model_names) > 1  # several models: every series names its model
        model = ["model"] if self.labelled else []
        self.requests = Counter(
            PREFIX + "requests",
            "Generation requests by endpoint and outcome: success, invalid (4xx), rejected (429, queue full), "
            "cancelled (the client went away), error (5xx)",
            [*model, "endpoint", "outcome"],
            registry=r,
        )
        self.sequences_finished = Counter(
            PREFIX + "request_success",
            "Generated sequences (one per choice) by finish reason: stop, length, abort, error",
            [*model, "finished_reason"],
            registry=r,
        )
        self.running = Gauge(PREFIX + "num_requests_running", "Sequences in the running batch", model, registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Sequences queued for a batch slot", model, registry=r)
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "From arrival (tokenization included) to the first generated token",
            model,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Between consecutive generated tokens of a sequence",
            model,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "From arrival to the last token of a successful request",
            model,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of successful requests", model, registry=r
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Generated tokens of successful requests", model, registry=r
        )
        self.firing_rate = Histogram(
            PREFIX + "firing_rate",
            "Mean firing rate of a request's spiking sites (spikes per neuron per token)",
            model,
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.energy = Counter(
            PREFIX + "energy_joules",
            "Estimated energy of the model's arithmetic for successful requests, by accounting rule (an estimate "
            "from operation counts, not a measurement)",
            [*model, "rule"],
            registry=r,
        )
        self.data_movement = Counter(
            PREFIX + "energy_data_movement_joules",
            "Estimated energy of reading the model's weights for successful requests, by accounting rule (bytes "
            "read under the rule's reading, dense or event-driven, priced per byte by the energy profile)",
            [*model, "rule"],
            registry=r,
        )
        self.state_caches: dict[str | None, CacheStats] = {}
        self.registry.register(_StateCacheCollector(self.state_caches))

    def for_model(self, name: str) -> ModelMetrics:
        """The series of the served model ``name``."""
        metrics = ModelMetrics(self, {"model": name} if self.labelled else {})
        metrics.running.set(0)  # the gauges are there (at 0) before the model's first step
        metrics.waiting.set(0)
        return metrics

    def unrouted(self) -> ModelMetrics:
        """Where requests that name no served model are counted: model "" on a server of several models."""
        return ModelMetrics(self, {"model": ""} if self.labelled else {})

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _series(family, labels: dict[str, str]):
    """The series of ``family`` with ``labels`` (the family itself when it has no labels)."""
    return family.labels(**labels) if labels else family


class ModelMetrics:
    """One served model's series: what its host, engine worker and requests update."""

    def __init__(self, server: ServerMetrics, labels: dict[str, str]):
        self.server = server
        self.labels = labels  # {"model": name} on a server of several models, else none

    @property
    def ttft(self):
        return _series(self.server.ttft, self.labels)

    @property
    def itl(self):
        return _series(self.server.itl, self.labels)

    @property
    def running(self):
        return _series(self.server.running, self.labels)

    @property
    def waiting(self):
        return _series(self.server.waiting, self.labels)

    def watch_state_cache(self, stats: CacheStats) -> None:
        """Export the prefix-state cache's own counters, read at each scrape (the cache keeps them; nothing here
        can drift from them)."""
        self.server.state_caches[self.labels.get("model")] = stats

    def request_done(self, endpoint: str, outcome: str) -> None:
        self.server.requests.labels(**self.labels, endpoint=endpoint, outcome=outcome).inc()

    def sequence_finished(self, reason: str) -> None:
        self.server.sequences_finished.labels(**self.labels, finished_reason=reason).inc()

    def generation_done(self, prompt_tokens: int, completion_tokens: int, latency_s: float, energy: dict) -> None:
        """Account a successful request: its tokens, latency, firing rate and energy (the "energy" field)."""
        s, labels = self.server, self.labels
        _series(s.prompt_tokens, labels).inc(prompt_tokens)
        _series(s.generation_tokens, labels).inc(completion_tokens)
        _series(s.e2e, labels).observe(latency_s)
        _series(s.firing_rate, labels).observe(energy["firing_rate"])
        for rule, report in energy["rules"].items():
            s.energy.labels(**labels, rule=rule).inc(report["energy_j"])
            s.data_movement.labels(**labels, rule=rule).inc(report["data_movement_j"])


class _StateCacheCollector:
    """The state caches' counters, one series per model's cache (labelled by model when the server has several)."""

    def __init__(self, caches: dict[str | None, CacheStats]):
        self.caches = caches  # model name (None: the only model) -> its cache's stats

    def describe(self):
        return []

    def collect(self):
        if not self.caches:
            return
        labelled = None not in self.caches
        model = ["model"] if labelled else []
        counters = (
            ("hits", "Requests that started from a cached prefix state", lambda s: s.hits),
            ("misses", "Requests (prompts longer than one chunk) that found no cached prefix", lambda s: s.misses),
            ("cached_tokens", "Prompt tokens restored from the cache instead of computed", lambda s: s.cached_tokens),
        )
        for name, text, value in counters:
            family = CounterMetricFamily(PREFIX + "state_cache_" + name, text, labels=model)
            for key, stats in self.caches.items():
                family.add_metric([key] if labelled else [], value(stats))
            yield family
        evictions = CounterMetricFamily(
            PREFIX + "state_cache_evictions",
            "Cached states dropped to stay within the size bound",
            labels=[*model, "tier"],
        )
        held = GaugeMetricFamily(PREFIX + "state_cache_bytes", "Bytes of cached states held", labels=[*model, "tier"])
        entries = GaugeMetricFamily(PREFIX + "state_cache_entries", "Cached states held", labels=[*model, "tier"])
        for key, s in self.caches.items():
            tiers = (
                ("memory", s.evictions, s.bytes, s.entries),
                ("disk", s.disk_evictions, s.disk_bytes, s.disk_entries),
            )
            for tier, evicted, nbytes, count in tiers:
                labels = [key, tier] if labelled else [tier]
                evictions.add_metric(labels, evicted)
                held.add_metric(labels, nbytes)
                entries.add_metric(labels, count)
        yield from (evictions, held, entries)
