"""Models side by side: the figures of each model's run on one prompt, and the table of their differences.

The one definition of every figure that ``spikegpt compare`` prints, the server's ``POST /v1/compare`` answers and
its ``/compare`` page shows (the page draws the table the server sends; it computes none of it):

- ``tokens``: the tokens the model generated;
- ``energy_per_token.<rule>``: the estimated energy per generated token with data movement (the "energy" field's
  ``total_j_per_generated_token``) under each accounting rule;
- ``firing_rate``: the mean firing rate over every spiking site and token (the field's ``firing_rate``);
- ``input_zero_fraction``: the share of the block products' input elements that were zero (what event-driven
  hardware skips);
- ``bits_per_byte``: for a prompt whose continuation is given, the model's bits per UTF-8 byte of that
  continuation read after the prompt (its tokens' log-probabilities, from echo + logprobs): lower is better.

Each row also gives every figure relative to the first model's (the reference), so that the table reads as
differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .accounting import RULES
from .render import format_joules


@dataclass(frozen=True)
class Figure:
    """One column of the table: ``key`` in each row's values, ``label`` its heading, ``kind`` how it is written
    (count, joules, fraction or bits)."""

    key: str
    label: str
    kind: str
    description: str


FIGURES = (
    Figure("tokens", "tokens", "count", "tokens generated"),
    *(
        Figure(
            f"energy_per_token.{rule}",
            f"energy/token ({rule})",
            "joules",
            f"estimated energy per generated token with data movement, rule {rule}",
        )
        for rule in RULES
    ),
    Figure("firing_rate", "firing rate", "fraction", "mean firing rate over every spiking site and token"),
    Figure("input_zero_fraction", "zero inputs", "fraction", "share of the products' input elements that were zero"),
    Figure("bits_per_byte", "bits/byte", "bits", "bits per byte of the given continuation after the prompt"),
)


@dataclass
class Run:
    """One model's run on the compared prompt: what it generated (``completion_tokens``), the request's "energy"
    field, and with a given ``continuation`` the log-probabilities (natural log) of its tokens after the prompt."""

    model: str
    completion_tokens: int
    energy: dict
    continuation: str | None = None
    continuation_logprobs: list[float] | None = None


def bits_per_byte(logprobs: Sequence[float], text: str) -> float:
    """Bits per UTF-8 byte of ``text`` from its tokens' log-probabilities (every byte counts, as in evaluation)."""
    return -math.fsum(logprobs) / math.log(2) / max(len(text.encode("utf-8")), 1)


def figures(run: Run) -> dict[str, float | int | None]:
    """The values of ``FIGURES`` for one run (None where it has none: no continuation, no products' reads)."""
    values: dict[str, float | int | None] = {"tokens": run.completion_tokens}
    for rule in RULES:
        values[f"energy_per_token.{rule}"] = run.energy["rules"][rule]["total_j_per_generated_token"]
    values["firing_rate"] = run.energy["firing_rate"]
    values["input_zero_fraction"] = run.energy.get("input_zero_fraction")
    scored = run.continuation is not None and run.continuation_logprobs is not None
    values["bits_per_byte"] = bits_per_byte(run.continuation_logprobs, run.continuation) if scored else None
    return values


def _relative(value: float | int | None, reference: float | int | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def compare_table(runs: Sequence[Run | None], models: Sequence[str]) -> dict:
    """The table of ``runs`` (one per model of ``models``, in order; None for a model whose run failed): the
    figures' headings, and per model its values and each value relative to the first model's."""
    rows = []
    reference = figures(runs[0]) if runs and runs[0] is not None else {}
    for model, run in zip(models, runs, strict=True):
        values = figures(run) if run is not None else {f.key: None for f in FIGURES}
        relative = {key: _relative(value, reference.get(key)) for key, value in values.items()}
        rows.append({"model": model, "values": values, "relative": relative})
    return {
        "object": "compare.table",
        "reference": models[0],
        "figures": [{"key": f.key, "label": f.label, "kind": f.kind, "description": f.description} for f in FIGURES],
        "rows": rows,
    }


def format_value(value: float | int | None, kind: str) -> str:
    """A figure as the table writes it (the /compare page writes it the same way)."""
    if value is None:
        return "-"
    if kind == "count":
        return str(value)
    if kind == "joules":
        return format_joules(value)
    return f"{value:.3f}" if kind == "fraction" else f"{value:.4f}"


def format_relative(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}×"


def format_table(table: dict) -> str:
    """The table for a terminal: one row per model, each figure with its ratio to the first model's beneath."""
    headings = ["model", *(f["label"] for f in table["figures"])]
    lines = [headings]
    for row in table["rows"]:
        lines.append([row["model"], *(format_value(row["values"][f["key"]], f["kind"]) for f in table["figures"])])
        if row["model"] != table["reference"]:
            relative = [format_relative(row["relative"][f["key"]]) for f in table["figures"]]
            lines.append([f"  vs {table['reference']}", *relative])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headings))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
