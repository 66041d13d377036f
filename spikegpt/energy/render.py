"""An energy report for people: a per-layer text table, and a figure (firing rates, energy by operation kind, the
total beside the baselines)."""

from __future__ import annotations

from pathlib import Path

from ..errors import EnergyError
from .accounting import KINDS, READS
from .report import EnergyReport

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BINARY_PREFIXES = ((2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki"))
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


def format_bytes(n: int) -> str:
    """A byte count with a binary prefix and three significant figures: 7769088 → '7.41 MiB', 2**20 → '1 MiB'."""
    for scale, prefix in _BINARY_PREFIXES:
        if n >= scale:
            value = n / scale  # below 1024: 1000 MiB is written out, not as '1e+03 MiB'
            return f"{value:.3g} {prefix}B" if value < 1000 else f"{value:.0f} {prefix}B"
    return f"{n} B"


def _aligned(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """``header`` and ``rows`` as lines of columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = enumerate(zip(row, widths, strict=True))
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in cells)

    return [line(row) for row in (header, *rows)]


def memory_line(report: EnergyReport) -> str:
    """Where the report's weights were read from, and why: the profile's placement rule on the model's bytes."""
    widths = report.weight_widths
    stored = f"{format_bytes(report.stored_weight_bytes)} of weight matrices"
    if widths is not None:
        stored += f" (products {widths.products}-bit, head {widths.head}-bit, embedding {widths.embedding}-bit)"
    profile = report.profile
    if report.weight_memory is None:
        return f"weights: {stored}; data movement NOT priced: profile {profile.name} gives no memory prices"
    if profile.weight_memory == "auto":
        fits = "fit" if report.weight_memory == "sram" else "exceed"
        why = f", which {fits} the profile's {format_bytes(profile.sram_bytes)} on-chip SRAM"
    else:
        why = f", kept in {profile.weight_memory.upper()} (weight_memory = {profile.weight_memory!r})"
    price = getattr(profile, f"{report.weight_memory}_pj_per_byte")
    line = f"weights: {stored}{why}: read from {report.weight_memory.upper()} at {price:g} pJ/byte"
    if profile.reads_included:
        line += f"; the reads of {', '.join(k.upper() for k in profile.reads_included)} are inside their price"
    return line


def format_table(report: EnergyReport) -> str:
    """The report as a table: one row per layer (firing rate, operations by kind and their energy, weight bytes
    read and their energy, the total and its share), totals, per-token figures, baselines with ratios before and
    after data movement, the rules and what the estimate leaves out."""
    header = ("layer", "rate", "MAC", "AC", "neuron", "elementwise", "operations", "weights read", "movement", "total")
    header += ("share",)
    total = report.total_j
    rows = []
    for layer in report.layers:
        rate = layer.ops.firing_rate
        share = f"{layer.total_j / total:.1%}" if total else "-"
        counts = [format_count(layer.ops.count(kind)) for kind in KINDS]
        rows.append(
            (
                layer.ops.name,
                "-" if rate is None else f"{rate:.3f}",
                *counts,
                format_joules(layer.energy_j),
                format_bytes(layer.ops.weight_bytes),
                format_joules(layer.data_movement_j),
                format_joules(layer.total_j),
                share,
            )
        )
    totals = [format_count(report.count(kind)) for kind in KINDS]
    rows.append(
        (
            "total",
            f"{report.firing_rate:.3f}",
            *totals,
            format_joules(report.energy_j),
            format_bytes(report.weight_bytes),
            format_joules(report.data_movement_j),
            format_joules(total),
            "100%" if total else "-",
        )
    )
    head, *body, last = _aligned(header, rows)
    rule_line = "-" * len(head)
    out = [
        f"Energy ESTIMATE (not a measurement) · rule: {report.rule} · profile: {report.profile.name} · weights: "
        + (f"{report.weight_bits}-bit" if report.weight_bits else "float"),
        f"{report.tokens} tokens processed · logits at {report.head_tokens} positions · "
        f"mean firing rate {report.firing_rate:.3f} (rate column: fraction of a layer's outputs that were spikes)",
        memory_line(report),
        "",
        head,
        rule_line,
        *body,
        rule_line,
        last,
        "",
        "per processed token: " + _three(report.energy_j_per_token, report.data_movement_j, report.tokens),
    ]
    if report.generated_tokens:
        out.append(
            "per generated token: "
            + _three(report.energy_j_per_generated_token, report.data_movement_j, report.generated_tokens)
        )
    by_kind = {**report.energy_by_kind(), "data movement": report.data_movement_j}
    out.append(
        "by kind: "
        + ", ".join(
            f"{kind} {format_joules(j)}" + (f" ({j / total:.0%})" if total else "") for kind, j in by_kind.items()
        )
    )
    out.append(
        "baselines (ratio = baseline energy / this estimate's, operations alone and with data movement; > 1: the "
        "spiking model is estimated cheaper):"
    )
    baseline_header = ("", "operations", "ratio", "weights read", "memory", "movement", "total", "ratio")
    baseline_rows = [
        (
            f"  {b.name}",
            format_joules(b.energy_j),
            _ratio(b.ratio),
            format_bytes(b.weight_bytes),
            (b.weight_memory or "-").upper(),
            format_joules(b.data_movement_j),
            format_joules(b.total_j),
            _ratio(b.total_ratio),
        )
        for b in report.baselines
    ]
    out += _aligned(baseline_header, baseline_rows)
    out += [f"  {b.name}: {b.description}" for b in report.baselines]
    out.append(f"rule {report.rule}: {report.rule_description}")
    if report.rule == "paper":
        out.append("  (each block row's K/V/R and channel-mix operations scale with the rate of the row above it)")
    out += [
        f"weight reads ({report.reads_rule}): {READS[report.reads_rule]}; the head and the embedding lookup read "
        "every row they need under every rule; each token reads its weights anew",
        f"profile {report.profile.name}: {report.profile.description}",
        *([f"profile leaves out: {report.profile.leaves_out}"] if report.profile.leaves_out else []),
        "excludes: " + "; ".join(report.excludes),
    ]
    return "\n".join(out)


def _three(operations_per: float | None, movement: float, tokens: int) -> str:
    """Operations, data movement and their total per token: 'operations 1.92 µJ · data movement ... · total ...'."""
    if operations_per is None:
        return "-"
    moved = movement / tokens
    return (
        f"operations {format_joules(operations_per)} · data movement {format_joules(moved)} · "
        f"total {format_joules(operations_per + moved)}"
    )


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:#.3g}x"


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
    """The report as a figure: firing rate per spiking layer and each layer's energy split by operation kind and
    data movement (one row per layer); under them the operations' total beside the baselines with their ratios,
    and the same with data movement (the weights read) stacked on. Every label has room of its own at any depth:
    the layout is matplotlib's constrained layout, the kinds' legend sits above its panel (not below, where it met
    the axis label) and the bar labels have their own margin."""
    plt = pyplot()
    names = [layer.ops.name for layer in report.layers]
    rows = len(names)
    fig = plt.figure(figsize=(12, 0.3 * rows + 6.8), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[0.3 * rows + 1.2, 1.8, 1.8])
    rates = fig.add_subplot(grid[0, 0])
    energy = fig.add_subplot(grid[0, 1], sharey=rates)

    positions = range(rows)
    rates.barh(positions, [layer.ops.firing_rate or 0.0 for layer in report.layers], color="tab:blue")
    rates.set_yticks(list(positions), names)
    rates.set_ylim(rows - 0.5, -0.5)  # first layer on top, no empty margin
    rates.set_xlim(0, 1)
    rates.set_xlabel("measured firing rate")

    scale, unit = _joule_scale(max(layer.total_j for layer in report.layers))
    left = [0.0] * rows
    parts = [(kind, lambda layer, kind=kind: layer.energy_by_kind()[kind]) for kind in KINDS]
    for label, joules in [*parts, ("data movement", lambda layer: layer.data_movement_j)]:
        values = [joules(layer) / scale for layer in report.layers]
        energy.barh(positions, values, left=left, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    energy.tick_params(labelleft=False)
    energy.set_xlabel(f"estimated energy per layer ({unit})")
    energy.legend(
        title="operation kind, and the weights read",
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(KINDS) + 1,
        frameon=False,
    )

    self_name = f"SpikeGPT, rule {report.rule}"
    operations = [(self_name, report.energy_j, 0.0, None)] + [
        (BASELINE_LABELS.get(b.name, b.name), b.energy_j, 0.0, b.ratio) for b in report.baselines
    ]
    summary = [f"total {format_joules(report.energy_j)}", f"{format_joules(report.energy_j_per_token)} per token"]
    if report.generated_tokens:
        summary.append(f"{format_joules(report.energy_j_per_generated_token)} per generated token")
    summary.append(f"mean firing rate {report.firing_rate:.3f}")
    _totals_panel(
        fig.add_subplot(grid[1, :]),
        operations,
        "operations: " + " · ".join(summary) + "\nratio = baseline energy / this estimate; > 1: the spiking model is "
        "estimated cheaper",
        f"estimated energy of the operations on all {report.tokens} tokens",
    )
    moved = [(self_name, report.energy_j, report.data_movement_j, None)] + [
        (BASELINE_LABELS.get(b.name, b.name), b.energy_j, b.data_movement_j, b.total_ratio) for b in report.baselines
    ]
    where = "not priced by this profile" if report.weight_memory is None else f"from {report.weight_memory.upper()}"
    _totals_panel(
        fig.add_subplot(grid[2, :]),
        moved,
        f"with data movement (weights read {where}): total {format_joules(report.total_j)} · "
        f"{format_joules(report.total_j_per_token)} per token; reads: {report.reads_rule}",
        f"estimated energy of the operations and the weights read, all {report.tokens} tokens",
    )
    fig.suptitle(
        f"SpikeGPT energy ESTIMATE · rule {report.rule} · profile {report.profile.name} · {report.tokens} tokens"
    )
    return fig


def _totals_panel(axes, bars: list[tuple[str, float, float, float | None]], title: str, xlabel: str) -> None:
    """Horizontal bars (name, operations' joules, data movement's joules stacked on, ratio or None for the model
    itself), each labelled with its total and ratio."""
    largest_j = max(ops + moved for _, ops, moved, _ in bars)
    scale, unit = _joule_scale(largest_j)
    where = range(len(bars))
    colors = ["tab:blue"] + ["tab:gray"] * len(bars[1:])
    axes.barh(where, [ops / scale for _, ops, _, _ in bars], color=colors)
    left = [ops / scale for _, ops, _, _ in bars]
    axes.barh(where, [moved / scale for _, _, moved, _ in bars], left=left, color=colors, alpha=0.45, hatch="//")
    axes.set_yticks(where, [name for name, _, _, _ in bars])
    axes.invert_yaxis()
    largest = largest_j / scale
    axes.set_xlim(0, largest * 1.55)  # room for the labels right of the bars
    for i, (_, ops, moved, ratio) in enumerate(bars):
        joules = ops + moved
        label = format_joules(joules) if ratio is None else f"{format_joules(joules)} · {ratio:#.3g}x this estimate"
        axes.text(joules / scale + largest * 0.01, i, label, va="center", fontsize=9)
    axes.set_xlabel(f"{xlabel} ({unit})")
    axes.set_title(title, fontsize=10, loc="left")


def plot_report(report: EnergyReport, path: str | Path) -> None:
    """Save ``energy_figure(report)``."""
    fig = energy_figure(report)
    try:
        fig.savefig(path, bbox_inches="tight")
    except OSError as e:
        raise EnergyError(f"{path}: cannot write the plot ({e.strerror or e})") from e
    finally:
        pyplot().close(fig)
