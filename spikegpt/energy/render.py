"""An energy report for people: a per-layer text table, and a figure (firing rates, energy by operation kind)."""

from __future__ import annotations

from pathlib import Path

from ..errors import EnergyError
from .accounting import KINDS
from .report import EnergyReport

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_JOULE_UNITS = ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"))


def format_count(n: int) -> str:
    """An operation count with an SI prefix and three significant figures: 1234567 → '1.23 M'."""
    for scale, prefix in _PREFIXES:
        if n >= scale:
            return f"{n / scale:.3g} {prefix}"
    return str(n)


def format_joules(j: float | None) -> str:
    """Energy with a readable unit and three significant figures: 1.234e-6 → '1.23 µJ'."""
    if j is None:
        return "-"
    for scale, unit in _JOULE_UNITS:
        if abs(j) >= scale:
            return f"{j / scale:.3g} {unit}"
    return f"{j / 1e-12:.3g} pJ" if j else "0 J"


def format_table(report: EnergyReport) -> str:
    """The report as a table: one row per layer (firing rate, operations by kind, energy, share), totals,
    per-token figures, baselines with ratios, the rule and what the estimate leaves out."""
    header = ("layer", "rate", "MAC", "AC", "neuron", "elementwise", "energy", "share")
    total = report.energy_j
    rows = []
    for layer in report.layers:
        rate = layer.ops.firing_rate
        share = f"{layer.energy_j / total:.1%}" if total else "-"
        counts = [format_count(layer.ops.count(kind)) for kind in KINDS]
        rows.append(
            (layer.ops.name, "-" if rate is None else f"{rate:.3f}", *counts, format_joules(layer.energy_j), share)
        )
    totals = [format_count(report.count(kind)) for kind in KINDS]
    rows.append(("total", f"{report.firing_rate:.3f}", *totals, format_joules(total), "100%" if total else "-"))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    rule_line = "-" * len(line(header))
    out = [
        f"Energy ESTIMATE (not a measurement) · rule: {report.rule} · profile: {report.profile.name} · weights: "
        + (f"{report.weight_bits}-bit" if report.weight_bits else "float"),
        f"{report.tokens} tokens processed · logits at {report.head_tokens} positions · "
        f"mean firing rate {report.firing_rate:.3f} (rate column: fraction of a layer's outputs that were spikes)",
        "",
        line(header),
        rule_line,
        *(line(row) for row in rows[:-1]),
        rule_line,
        line(rows[-1]),
        "",
        f"per processed token: {format_joules(report.energy_j_per_token)}",
    ]
    if report.generated_tokens:
        out.append(f"per generated token: {format_joules(report.energy_j_per_generated_token)}")
    by_kind = report.energy_by_kind()
    out.append(
        "by kind: "
        + ", ".join(
            f"{kind} {format_joules(j)}" + (f" ({j / total:.0%})" if total else "") for kind, j in by_kind.items()
        )
    )
    out.append("baselines (ratio = baseline energy / this estimate; > 1: the spiking model is estimated cheaper):")
    for baseline in report.baselines:
        ratio = "-" if baseline.ratio is None else f"{baseline.ratio:#.3g}x"
        out.append(
            f"  {baseline.name:<12} {format_joules(baseline.energy_j):>10}  ratio {ratio:<8} {baseline.description}"
        )
    out.append(f"rule {report.rule}: {report.rule_description}")
    if report.rule == "paper":
        out.append("  (each block row's K/V/R and channel-mix operations scale with the rate of the row above it)")
    out += [
        f"profile {report.profile.name}: {report.profile.description}",
        *([f"profile leaves out: {report.profile.leaves_out}"] if report.profile.leaves_out else []),
        "excludes: " + "; ".join(report.excludes),
    ]
    return "\n".join(out)


def pyplot():
    """matplotlib's pyplot on a file-only backend, or an EnergyError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise EnergyError("plotting needs matplotlib, which is not installed: pip install 'spikegpt[plot]'") from e
    return plt


def plot_report(report: EnergyReport, path: str | Path) -> None:
    """Save a figure: firing rate per spiking layer, and each layer's energy split by operation kind."""
    plt = pyplot()
    names = [layer.ops.name for layer in report.layers]
    fig, (rates, energy) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.35 * len(names) + 1.5)), sharey=True)
    positions = range(len(names))
    rates.barh(positions, [layer.ops.firing_rate or 0.0 for layer in report.layers], color="tab:blue")
    rates.set_yticks(list(positions), names)
    rates.invert_yaxis()
    rates.set_xlim(0, 1)
    rates.set_xlabel("measured firing rate")
    largest = max(layer.energy_j for layer in report.layers)
    scale, unit = next(((s, u) for s, u in _JOULE_UNITS if largest >= s), _JOULE_UNITS[-1])
    left = [0.0] * len(names)
    for kind in KINDS:
        values = [layer.energy_by_kind()[kind] / scale for layer in report.layers]
        energy.barh(positions, values, left=left, label=kind)
        left = [a + b for a, b in zip(left, values, strict=True)]
    energy.set_xlabel(f"estimated energy ({unit})")
    energy.legend(title="operation kind", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(KINDS))
    fig.suptitle(
        f"SpikeGPT energy ESTIMATE · rule {report.rule} · profile {report.profile.name} · {report.tokens} tokens"
    )
    fig.tight_layout()
    try:
        fig.savefig(path, bbox_inches="tight")
    except OSError as e:
        raise EnergyError(f"{path}: cannot write the plot ({e.strerror or e})") from e
    finally:
        plt.close(fig)
