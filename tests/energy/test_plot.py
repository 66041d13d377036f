"""``spikegpt energy --plot``'s figure: the layers, the total and the baselines, and no text overlapping any other
or leaving the figure, at every depth (one layer to many, both rules)."""

from __future__ import annotations

import itertools
import random

import pytest

from spikegpt import SpikeGPTConfig
from spikegpt.energy import SpikeTotals, energy_report
from spikegpt.energy.render import energy_figure, format_joules, pyplot
from spikegpt.modeling.layout import spike_layout

pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the plot extra)")


def report_of_depth(n_layer: int, rule: str, seed: int, ffn_pre: bool = False):
    """A report of made-up spikes (at random rates) of a model of that depth: the figure's layout depends only
    on the shape of the report."""
    config = SpikeGPTConfig(vocab_size=100, n_layer=n_layer, n_embd=64, ffn_pre=ffn_pre)
    generator = random.Random(seed)
    tokens = 300
    sites = spike_layout(config).sites
    spikes = tuple(generator.randint(0, tokens * 64) for _ in sites)
    totals = SpikeTotals(sites, spikes, (tokens,), 64)
    return energy_report(totals, config, rule, generated_tokens=100)


def drawn_texts(fig) -> list:
    """Every non-empty text the figure draws, with its extent on the canvas: recorded while drawing, so only what
    is really drawn counts (matplotlib keeps tick labels outside the view, which it skips)."""
    import matplotlib.text

    found = []
    draw = matplotlib.text.Text.draw

    def recording(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            found.append((self.get_text(), self.get_window_extent(renderer)))

    matplotlib.text.Text.draw = recording
    try:
        fig.canvas.draw()
    finally:
        matplotlib.text.Text.draw = draw
    return found


def overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0) * max(height, 0)


@pytest.mark.parametrize(
    ("n_layer", "rule"), [(1, "strict"), (2, "strict"), (2, "paper"), (4, "paper"), (12, "strict"), (24, "paper")]
)
def test_no_text_overlaps_at_any_depth(n_layer, rule, seed):
    fig = energy_figure(report_of_depth(n_layer, rule, seed, ffn_pre=n_layer == 4))
    try:
        found = drawn_texts(fig)
        page = fig.bbox
        for text, box in found:
            assert (
                page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1
            ), f"{text!r} leaves the figure"
        for (a, box_a), (b, box_b) in itertools.combinations(found, 2):
            assert overlap(box_a, box_b) < 1.0, f"{a!r} overlaps {b!r}"
    finally:
        pyplot().close(fig)


def test_the_figure_shows_the_total_and_the_baselines(seed):
    report = report_of_depth(2, "strict", seed)
    fig = energy_figure(report)
    try:
        shown = " | ".join(text for text, _ in drawn_texts(fig))
        assert f"total {format_joules(report.energy_j)}" in shown
        assert f"{format_joules(report.energy_j_per_generated_token)} per generated token" in shown
        for baseline in report.baselines:
            assert f"{format_joules(baseline.energy_j)} · {baseline.ratio:#.3g}x this estimate" in shown
        assert "spiking off" in shown and "vanilla GPT" in shown and "SpikeGPT, rule strict" in shown
    finally:
        pyplot().close(fig)


def test_joules_take_the_unit_of_the_rounded_value():
    assert format_joules(999.7e-9) == "1 µJ"  # not "1e+03 nJ"
    assert format_joules(1.234e-6) == "1.23 µJ" and format_joules(0.0) == "0 J" and format_joules(None) == "-"
