"""What the benchmarks share: one JSON object per measurement on stdout, and the percentiles they report.

The scripts run as ``python bench/<name>.py``, which puts this folder on the import path (``from common import
emit``). The server process they start is ``spikegpt.serve.testing.ServerProcess``, the tests' own."""

from __future__ import annotations

import json
import statistics


def emit(record: dict) -> dict:
    """Print ``record`` as one line of JSON (flushed: a reader sees each measurement as it is made); returns it."""
    print(json.dumps(record), flush=True)
    return record


def percentiles(values: list[float], scale: float = 1000.0) -> dict | None:
    """p50, p90, p99 (the nearest rank) and the mean of ``values`` times ``scale`` (seconds to milliseconds by
    default); None without values."""
    if not values:
        return None
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * scale

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "mean": statistics.fmean(values) * scale}
