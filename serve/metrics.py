"""Prometheus metrics, named after vLLM's (``vllm:time_to_first_token_seconds`` → ``spikegpt:...``) so existing
dashboards need only a prefix change, plus the spiking model's own: firing rate and estimated energy.

Each app has its own registry, so several apps in one process (tests) never share counters.
"""

from __future__ import annotations

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
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "Generation requests by endpoint and outcome: success, invalid (4xx), rejected (429, queue full), "
            "cancelled (the client went away), error (5xx)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.sequences_finished = Counter(
            PREFIX + "request_success",
            "Generated sequences (one per choice) by finish reason: stop, length, abort, error",
            ["finished_reason"],
            registry=r,
        )
        self.running = Gauge(PREFIX + "num_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Sequences queued for a batch slot", registry=r)
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "From arrival (tokenization included) to the first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Between consecutive generated tokens of a sequence",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "From arrival to the last token of a successful request",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of successful requests", registry=r)
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Generated tokens of successful requests", registry=r
        )
        self.firing_rate = Histogram(
            PREFIX + "firing_rate",
            "Mean firing rate of a request's spiking sites (spikes per neuron per token)",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.energy = Counter(
            PREFIX + "energy_joules",
            "Estimated energy of the model's arithmetic for successful requests, by accounting rule (an estimate "
            "from operation counts, not a measurement)",
            ["rule"],
            registry=r,
        )
        self.data_movement = Counter(
            PREFIX + "energy_data_movement_joules",
            "Estimated energy of reading the model's weights for successful requests, by accounting rule (bytes "
            "read under the rule's reading, dense or event-driven, priced per byte by the energy profile)",
            ["rule"],
            registry=r,
        )

    def watch_state_cache(self, stats: CacheStats) -> None:
        """Export the prefix-state cache's own counters, read at each scrape (the cache keeps them; nothing here
        can drift from them)."""
        self.registry.register(_StateCacheCollector(stats))

    def request_done(self, endpoint: str, outcome: str) -> None:
        self.requests.labels(endpoint=endpoint, outcome=outcome).inc()

    def generation_done(self, prompt_tokens: int, completion_tokens: int, latency_s: float, energy: dict) -> None:
        """Account a successful request: its tokens, latency, firing rate and energy (the "energy" field)."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.e2e.observe(latency_s)
        self.firing_rate.observe(energy["firing_rate"])
        for rule, report in energy["rules"].items():
            self.energy.labels(rule=rule).inc(report["energy_j"])
            self.data_movement.labels(rule=rule).inc(report["data_movement_j"])

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCacheCollector:
    def __init__(self, stats: CacheStats):
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        s = self.stats
        counters = (
            ("hits", "Requests that started from a cached prefix state", s.hits),
            ("misses", "Requests (prompts longer than one chunk) that found no cached prefix", s.misses),
            ("cached_tokens", "Prompt tokens restored from the cache instead of computed", s.cached_tokens),
        )
        for name, text, value in counters:
            family = CounterMetricFamily(PREFIX + "state_cache_" + name, text)
            family.add_metric([], value)
            yield family
        tiers = (("memory", s.evictions, s.bytes, s.entries), ("disk", s.disk_evictions, s.disk_bytes, s.disk_entries))
        evictions = CounterMetricFamily(
            PREFIX + "state_cache_evictions", "Cached states dropped to stay within the size bound", labels=["tier"]
        )
        held = GaugeMetricFamily(PREFIX + "state_cache_bytes", "Bytes of cached states held", labels=["tier"])
        entries = GaugeMetricFamily(PREFIX + "state_cache_entries", "Cached states held", labels=["tier"])
        for tier, evicted, nbytes, count in tiers:
            evictions.add_metric([tier], evicted)
            held.add_metric([tier], nbytes)
            entries.add_metric([tier], count)
        yield from (evictions, held, entries)
