"""An energy report for people: a per-layer text table, and a figure (firing rates, energy by operation kind, the
total beside the baselines)."""

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
    rounded = float(f"{j:.3g}")  # the unit of the rounded value: 999.7 nJ is 1 µJ, not 1e+03 nJ
    for scale, unit in _JOULE_UNITS:
        if abs(rounded) >= scale:
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


BASELINE_LABELS = {"spiking_off": "spiking off", "vanilla_gpt": "vanilla GPT"}


def _joule_scale(largest: float) -> tuple[float, str]:
    return next(((s, u) for s, u in _JOULE_UNITS if largest >= s), _JOULE_UNITS[-1])


def energy_figure(report: EnergyReport):
    """The report as a figure: firing rate per spiking layer and each layer's energy split by operation kind (one
    row per layer), and under them the total beside the baselines with their ratios. Every label has room of its
    own at any depth: the layout is matplotlib's constrained layout, the kinds' legend sits above its panel (not
    below, where it met the axis label) and the bar labels have their own margin."""
    plt = pyplot()
    names = [layer.ops.name for layer in report.layers]
    rows = len(names)
    fig = plt.figure(figsize=(12, 0.3 * rows + 4.6), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[0.3 * rows + 1.2, 1.8])
    rates = fig.add_subplot(grid[0, 0])
    energy = fig.add_subplot(grid[0, 1], sharey=rates)
    totals = fig.add_subplot(grid[1, :])

    positions = range(rows)
    rates.barh(positions, [layer.ops.firing_rate or 0.0 for layer in report.layers], color="tab:blue")
    rates.set_yticks(list(positions), names)
    rates.set_ylim(rows - 0.5, -0.5)  # first layer on top, no empty margin
    rates.set_xlim(0, 1)
    rates.set_xlabel("measured firing rate")

    scale, unit = _joule_scale(max(layer.energy_j for layer in report.layers))
    left = [0.0] * rows
    for kind in KINDS:
        values = [layer.energy_by_kind()[kind] / scale for layer in report.layers]
        energy.barh(positions, values, left=left, label=kind)
        left = [a + b for a, b in zip(left, values, strict=True)]
    energy.tick_params(labelleft=False)
    energy.set_xlabel(f"estimated energy per layer ({unit})")
    energy.legend(title="operation kind", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(KINDS), frameon=False)

    bars = [(f"SpikeGPT, rule {report.rule}", report.energy_j, None)] + [
        (BASELINE_LABELS.get(b.name, b.name), b.energy_j, b.ratio) for b in report.baselines
    ]
    scale, unit = _joule_scale(max(j for _, j, _ in bars))
    totals.barh(range(len(bars)), [j / scale for _, j, _ in bars], color=["tab:blue"] + ["tab:gray"] * len(bars[1:]))
    totals.set_yticks(range(len(bars)), [name for name, _, _ in bars])
    totals.invert_yaxis()
    largest = max(j for _, j, _ in bars) / scale
    totals.set_xlim(0, largest * 1.55)  # room for the labels right of the bars
    for i, (_, joules, ratio) in enumerate(bars):
        label = format_joules(joules) if ratio is None else f"{format_joules(joules)} · {ratio:#.3g}x this estimate"
        totals.text(joules / scale + largest * 0.01, i, label, va="center", fontsize=9)
    totals.set_xlabel(f"estimated energy of all {report.tokens} tokens ({unit})")
    summary = [f"total {format_joules(report.energy_j)}", f"{format_joules(report.energy_j_per_token)} per token"]
    if report.generated_tokens:
        summary.append(f"{format_joules(report.energy_j_per_generated_token)} per generated token")
    summary.append(f"mean firing rate {report.firing_rate:.3f}")
    totals.set_title(
        " · ".join(summary) + "\nratio = baseline energy / this estimate; > 1: the spiking model is estimated cheaper",
        fontsize=10,
        loc="left",
    )
    fig.suptitle(
        f"SpikeGPT energy ESTIMATE · rule {report.rule} · profile {report.profile.name} · {report.tokens} tokens"
    )
    return fig


def plot_report(report: EnergyReport, path: str | Path) -> None:
    """Save ``energy_figure(report)``."""
    fig = energy_figure(report)
    try:
        fig.savefig(path, bbox_inches="tight")
    except OSError as e:
        raise EnergyError(f"{path}: cannot write the plot ({e.strerror or e})") from e
    finally:
        pyplot().close(fig)
