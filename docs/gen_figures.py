"""Write the documentation's tables of measurements from the committed results in ``bench/results/``.

Every measured figure in the documentation comes from here, never typed by hand (and so does the table of the
built-in hardware profiles, from the package's own definition): each table goes to
``docs/generated/NAME.md``, which the pages include (``--8<-- "NAME.md"``, the ``pymdownx.snippets`` extension), and
the README's table of figures is written between its ``generated:figures`` markers. Each table says which result
it comes from and where and when that was measured: from the result file itself where it records it, else from
``bench/results/provenance.json``. The study tables reuse the renderers of the scripts that measured them
(``bench/driven_study.py``, ``bench/hardware_study.py``).

    python docs/gen_figures.py           # write the tables
    python docs/gen_figures.py --check   # exit 1, naming the stale files, if anything would change
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GENERATED = ROOT / "docs" / "generated"
README = ROOT / "README.md"
PROVENANCE = RESULTS / "provenance.json"
BEGIN, END = "<!-- generated:figures (docs/gen_figures.py) -->", "<!-- end generated:figures -->"
BUNDLED = {
    "spikegpt/assets/spikegpt-shakespeare": "spikegpt-shakespeare",
    "spikegpt/assets/spikegpt-shakespeare-driven-k4": "spikegpt-shakespeare-driven-k4",
}


# ---------------------------------------------------------------- reading results and where they come from


def read_records(name: str) -> list[dict]:
    """A result file's records: one per line for ``.jsonl``, the one object of a ``.json``."""
    text = (RESULTS / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def _machine_id_words(machine_id: str) -> str:
    """``cpu:AMD EPYC:2cores:2threads`` (``spikegpt.runtime.products.machine_id``) in words."""
    kind, name, *rest = machine_id.split(":")
    words = [w.replace("cores", " cores").replace("threads", " threads") for w in rest]
    return ", ".join([f"{name} ({kind.upper()})", *words])


def provenance(name: str) -> tuple[str, str]:
    """(machine, date) of a result: what the file records, completed by ``provenance.json``."""
    records = read_records(name)
    recorded = json.loads(PROVENANCE.read_text())["results"].get(name, {})
    machine, date = recorded.get("machine"), recorded.get("date")
    meta = records[0].get("meta", {})
    sections = [v for v in meta.values() if isinstance(v, dict) and "time" in v]
    if sections:
        date = max(v["time"] for v in sections)[:10]
        machine = f"{machine}, torch {sections[0]['torch']}" if machine else f"torch {sections[0]['torch']}"
    for record in records:
        if "machine" in record:
            machine = _machine_id_words(record["machine"])
    threads = next((r["threads"] for r in records if "threads" in r), None)
    if threads and machine and "thread" not in machine:
        machine += f", {threads} torch thread{'s' if threads > 1 else ''}"
    if not machine or not date:
        raise SystemExit(f"bench/results/{name}: no machine or date, in the file or in {PROVENANCE.name}")
    return machine, date


def source_note(*names: str) -> str:
    """The line under a table: which results, measured where and when."""
    parts = []
    for name in names:
        machine, date = provenance(name)
        parts.append(f"`bench/results/{name}`: {machine}, {date}")
    return "<small>Measured: " + "; ".join(parts) + ".</small>"


def bench_module(name: str) -> ModuleType:
    """A script of ``bench/`` as a module, for its table renderers."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:  # the scripts import their siblings (bench/common.py), as when they run
        sys.path.insert(0, bench)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def by_measure(records: list[dict], measure: str) -> list[dict]:
    return [r for r in records if r.get("measure") == measure]


def size_of(record: dict) -> str:
    return f"{record['n_layer']} × {record['n_embd']}"


# ---------------------------------------------------------------- decoding speed


def decode_forms() -> str:
    records = read_records("decode-forms.jsonl")
    ours = [r for r in by_measure(records, "decode") if r["model"] == "spikegpt (ours)"]
    peers = {(r["model"], r["n_layer"], r["n_embd"]): r["tok_s"] for r in by_measure(records, "decode") if "tok_s" in r}
    rows = []
    for r in ours:

        def form(key: str, r=r) -> str:
            return f"{r[key]:.0f} tok/s ({r[key] / r['bound_tok_s']:.0%})"

        rows.append([
            size_of(r), form("eager_tok_s"), f"**{form('traced_tok_s')}**", form("compiled_tok_s"),
            f"{peers[('transformers RwkvForCausalLM', r['n_layer'], r['n_embd'])]:.0f} tok/s",
            f"{peers[('rwkv package cpu fp32', r['n_layer'], r['n_embd'])]:.0f} tok/s",
            f"{r['bound_tok_s']:.0f} tok/s",
        ])  # fmt: skip
    prefill = [
        f"{size_of(r)}: {r['parallel_tok_s']:,.0f} tok/s, {r['speedup']:.1f}× token by token"
        for r in by_measure(records, "prefill")
    ]
    header = ["model (layers × width)", "eager forward", "traced step (default)", "`--compile`",
              "transformers `RwkvForCausalLM`", "ChatRWKV `rwkv`, `cpu fp32`", "bound"]  # fmt: skip
    return (
        table(header, rows)
        + "\n\nPercentages are of the bound: the bytes of weights a step reads divided by the copy bandwidth measured"
        " in the same run. Prefill of a 512-token prompt with the parallel form: "
        + "; ".join(prefill)
        + ".\n\n"
        + source_note("decode-forms.jsonl")
    )


DENSITY_LABELS = {
    "bundled": "as measured on the bundled model of the placement",
    "binary": "as measured on the binary-spike study model",
    "measured": "the random-weight model's own inputs",
}


def _density_label(key: str, row_density: float) -> str:
    what = DENSITY_LABELS.get(key, "synthetic")
    return f"{what}: {row_density:.0%}"


def event_decode(placement: str) -> str:
    name = f"event_decode-{placement}.jsonl"
    records = read_records(name)
    summary = by_measure(records, "summary")[-1]["sizes"]
    densities = {
        (size_of(r), r["density"]): r["row_density"]
        for r in by_measure(records, "event_driven_decode")
        if r["batch"] == 1
    }
    rows = []
    for size, entry in summary.items():
        b1, b16 = entry["b1"], entry["b16"]
        label = size.replace("x", " × ")
        for key, ratio in b1["sparse_vs_dense_net"].items():
            rows.append([
                label, _density_label(key, densities[(label, key)]), f"{ratio:.2f}×",
                f"{b1['vs_rwkv_package'][key]:.2f}×" if key in b1["vs_rwkv_package"] else "–",
                f"{b16['auto_vs_dense_net'][key]:.2f}×",
            ])  # fmt: skip
    header = ["model", "active inputs per row", "batch 1: sparse ÷ dense", "batch 1: ÷ `rwkv` package",
              "batch 16: auto ÷ dense"]  # fmt: skip
    return (
        table(header, rows)
        + "\n\nRatios of tokens per second of the engine's traced decoding step, random weights, vocabulary 50277; "
        "the cost of making the synthetic inputs is measured and left out.\n\n" + source_note(name)
    )


def crossover(name: str = "crossover.jsonl") -> str:
    """The crossovers of one run of ``bench/crossover.py`` (``crossover-int8.jsonl``: ``--dtype int8``)."""
    records = by_measure(read_records(name), "crossover")
    shapes: dict[str, dict[int, float]] = {}
    for r in records:
        shapes.setdefault(f"{r['n_in']} → {r['n_out']}", {})[r["batch"]] = r["crossover"]
    rows = [[shape, f"{by_batch.get(1, 0):.0%}", f"{by_batch.get(16, 0):.0%}"] for shape, by_batch in shapes.items()]
    return (
        table(["product (inputs → outputs)", "batch 1", "batch 16"], rows)
        + "\n\nThe fraction of active inputs below which the event-driven product was at least 10% faster than the "
        "dense one (0%: never).\n\n" + source_note(name)
    )


DECODE_INT8 = "decode-int8-inputs.jsonl"  # python bench/decode.py --placement inputs > bench/results/...
MODE_LABELS = {"fp32": "fp32", "int8": "int8", "int8_sparse": "int8 event-driven", "int8_auto": "int8 auto",
               "fp32_sparse": "fp32 event-driven", "fp32_auto": "fp32 auto"}  # fmt: skip
PEER_LABELS = {"rwkv_package_fp32": "`rwkv` `cpu fp32`", "rwkv_package_fp32i8": "`rwkv` `cpu fp32i8`",
               "transformers": "transformers RWKV", "llama_cpp_q8_0": "llama.cpp Q8_0"}  # fmt: skip


def _speed(tok_s: float | None, fraction: float | None) -> str:
    """'123 tok/s · 71%': tokens per second and the fraction of the bound of the bytes read."""
    if tok_s is None:
        return "–"
    return f"{tok_s:,.0f} tok/s" + (f" · {fraction:.0%}" if fraction is not None else "")


def _density_words(key: str) -> str:
    return DENSITY_LABELS[key] if key in DENSITY_LABELS else f"{float(key):.0%} active"


def _decode_int8_sizes() -> dict:
    """The summary of ``bench/decode.py --placement inputs``, by model size."""
    return by_measure(read_records(DECODE_INT8), "summary")[-1]["sizes"]


def decode_int8() -> str:
    """The int8 and event-driven steps against the peers (``bench/decode.py --placement inputs``)."""
    steps, peers = [], []
    for size, entry in _decode_int8_sizes().items():
        label = size.replace("x", " × ")
        for threads, row in entry["threads"].items():
            for batch in ("b1", "b16"):
                if batch not in row:
                    continue
                tok_s, fraction = row[batch]["tok_s"], row[batch]["fraction_of_bound"]
                modes = list(tok_s)
                for density in tok_s[modes[0]]:
                    cells = [_speed(tok_s[m].get(density), fraction[m].get(density)) for m in modes]
                    ratio = row[batch]["int8_event_vs_int8_dense"].get(density)
                    steps.append([label, threads, batch[1:], _density_words(density), *cells,
                                  f"{ratio:.2f}×" if ratio is not None else "–"])  # fmt: skip
            measured = [row["peers"].get(name, {}) for name in PEER_LABELS]
            figures = [_speed(peer.get("tok_s"), peer.get("fraction_of_bound")) for peer in measured]
            generate = row.get("generate", {})
            peers.append([label, threads, *figures, _speed(generate.get("generate_tok_s"), None)])
    header = ["model", "threads", "batch", "inputs", *(MODE_LABELS[m] for m in modes), "event-driven ÷ int8"]
    return (
        table(header, steps)
        + "\n\nTokens per second of the engine's traced step, net of making the synthetic inputs, and the fraction of "
        "the bound of the bytes each step reads (random weights, vocabulary 50277).\n\n"
        + table(["model", "threads", *PEER_LABELS.values(), "`model.generate()`, int8"], peers)
        + "\n\nThe peers at batch 1, against the same bandwidth; `model.generate()` of the 8-bit model (the engine's "
        "step inside transformers' loop).\n\n" + source_note(DECODE_INT8)
    )


def int8_decode() -> str:
    """The products one at a time (``bench/int8_decode.py``)."""
    products = by_measure(read_records("int8_decode.jsonl"), "product")
    rows = []
    for r in products:
        shape, p = f"{r['n_in']} → {r['n_out']}", r["products"]
        ratios = r["int8_event_vs_int8_dense"].items()
        events = "; ".join(f"{float(k):.0%}: {v:.2f}×" for k, v in ratios)
        rows.append([shape, str(r["batch"]), str(r["threads"]),
                     *(f"{p[k]['gb_s']:.1f} GB/s · {p[k]['fraction_of_bandwidth']:.0%}" for k in
                       ("fp32", "int8", "int8_counts", "torch_linear_dynamic", "torch_weight_int8pack_mm")),
                     events])  # fmt: skip
    header = ["product", "batch", "threads", "fp32", "int8, real inputs", "int8, counts", "torch `linear_dynamic`",
              "torch `_weight_int8pack_mm`", "event-driven ÷ int8 (active inputs)"]  # fmt: skip
    return (
        table(header, rows)
        + "\n\nWeight bytes read per second, and their fraction of the copy bandwidth of the same run.\n\n"
        + source_note("int8_decode.jsonl")
    )


# ---------------------------------------------------------------- studies


def model_label(row: dict) -> str:
    """A study row's model in words: its placement, encoding and, for a bundled model, its name."""
    if row["spike_placement"] == "residual":
        label = "`residual`"
    elif row["input_spikes"] == "counts":
        label = f"`inputs`, counts K {row['spike_count_max']}, k {row['spike_count_scale']:g}"
    else:
        label = f"`inputs`, {row['input_spikes']} LIF" if row["input_spikes"] == "binary" else f"`{row['name']}`"
    bundled = BUNDLED.get(row["model"])
    return f"{label} (bundled `{bundled}`)" if bundled else label


def driven_study(name: str) -> str:
    study = read_records(name)[0]
    render = bench_module("driven_study")
    rows = [{**row, "name": model_label(row)} for row in study["models"]]
    blocks = "the whole held-out tail" if study["max_blocks"] is None else f"the first {study['max_blocks']} blocks"
    return (
        render.markdown(rows, study["twin_bits_per_byte"])
        + f"\n\nHeld-out Tiny Shakespeare, {blocks}; energy per processed token under the 45 nm fp32 profile. "
        "The non-spiking twin's figure is from the bundled model's card.\n\n" + source_note(name)
    )


def driven_projections() -> str:
    study = read_records("driven-study-tail.json")[0]
    render = bench_module("driven_study")
    rows = [{**row, "name": model_label(row)} for row in study["models"]]
    return (
        "Zero fraction / spikes per input element of every projection's input:\n\n"
        + render.projection_table(rows)
        + "\n\n"
        + source_note("driven-study-tail.json")
    )


def study_figure() -> str:
    """Bits per byte against the fraction of zero inputs of the study's models, the twin as a dashed line: an
    inline SVG (deterministic text, so the check that it is current is exact)."""
    study = read_records("driven-study-tail.json")[0]
    points = [
        (r["input_zero_fraction"], r["bits_per_byte"], model_label(r).split(" (bundled")[0].replace("`", ""))
        for r in study["models"]
    ]
    twin = study["twin_bits_per_byte"]
    low = min([twin] + [y for _, y, _ in points]) - 0.1
    high = max(y for _, y, _ in points) + 0.1
    width, height, left, bottom, top, right = 640, 320, 60, 40, 15, 20

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (width - left - right), top + (high - y) / (high - low) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" role="img" '
        'aria-label="bits per byte against zero inputs" font-family="sans-serif" font-size="12">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="currentColor"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="currentColor"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = at(tick, low)
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="currentColor">'
                     f"{tick:.0%}</text>")  # fmt: skip
    steps = int((high - low) / 0.2) + 1
    for i in range(steps + 1):
        value = round(low + i * 0.2, 1)
        if low <= value <= high:
            _, y = at(0, value)
            parts.append(
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="currentColor">{value:.1f}</text>'
            )
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle" fill="currentColor">'
                 "zero inputs (fraction of the projections' input elements)</text>")  # fmt: skip
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" fill="currentColor" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">bits per byte</text>')  # fmt: skip
    _, y = at(0, twin)
    parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="currentColor" '
                 'stroke-dasharray="4 4" opacity="0.6"/>')  # fmt: skip
    parts.append(f'<text x="{width - right - 4}" y="{y - 5:.1f}" text-anchor="end" fill="currentColor">'
                 f"non-spiking twin {twin:.3f}</text>")  # fmt: skip
    for x_value, y_value, label in points:
        x, y = at(x_value, y_value)
        anchor = "end" if x_value > 0.7 else "start"
        shift = -8 if anchor == "end" else 8
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#e8710a"/>')
        parts.append(f'<text x="{x + shift:.1f}" y="{y - 8:.1f}" text-anchor="{anchor}" fill="currentColor">'
                     f"{label}: {y_value:.3f}</text>")  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts) + "\n\n" + source_note("driven-study-tail.json")


def bundled_model() -> str:
    study = read_records("driven-study-tail.json")[0]
    row = next(r for r in study["models"] if r["model"] == "spikegpt/assets/spikegpt-shakespeare")
    rates = row["site_rates"]
    lif = [v for k, v in rates.items() if k != "embedding"]
    rows = [
        ["bits per byte (= per character)", f"{row['bits_per_byte']:.4f}", f"{study['twin_bits_per_byte']:.4f}"],
        ["mean firing rate", f"{row['residual_firing_rate']:.3f} (embedding {rates['embedding']:.2f}; LIF layers "
         f"{min(lif):.2f}–{max(lif):.2f})", "—"],
    ]  # fmt: skip
    return (
        table(["held-out 10% of Tiny Shakespeare", "spiking (bundled)", "non-spiking reference (card)"], rows)
        + "\n\n"
        + source_note("driven-study-tail.json")
    )


def frontier(name: str) -> str:
    """The frontier's table (``bench/frontier.py``'s own renderer) from its results JSON."""
    return bench_module("frontier").markdown(read_records(name)[0]) + "\n" + source_note(name)


HARDWARE_TABLES = ("bits", "noise", "energy")  # the tables bench/hardware_study.py's compare_markdown prints


def hardware_study(which: str) -> str:
    """One of the study's tables, both placements side by side."""
    names = ("hardware_study.json", "hardware_study-inputs.json")
    render = bench_module("hardware_study")
    tables = render.compare_markdown([read_records(name)[0] for name in names]).split("\n\n")
    assert len(tables) == len(HARDWARE_TABLES), "bench/hardware_study.py's compare_markdown changed its tables"
    return tables[HARDWARE_TABLES.index(which)] + "\n\n" + source_note(*names)


# ---------------------------------------------------------------- the package's own figures


def weights_read(profile) -> str:
    """A profile's price of reading weights (data movement), in a table cell."""
    from spikegpt.energy.render import format_bytes

    if not profile.prices_memory:
        return "not priced"
    prices = []
    if profile.sram_pj_per_byte is not None:
        size = f", up to {format_bytes(profile.sram_bytes)}" if profile.sram_bytes is not None else ""
        prices.append(f"{profile.sram_pj_per_byte:g} pJ/byte (SRAM{size})")
    if profile.dram_pj_per_byte is not None:
        prices.append(f"{profile.dram_pj_per_byte:g} pJ/byte (DRAM)")
    cell = " / ".join(prices)
    if profile.weight_memory != "auto":
        cell += f", always {profile.weight_memory.upper()}"
    cell += f"; float weights {profile.float_weight_bits}-bit"
    if profile.reads_included:
        kinds = " and ".join(kind.upper() for kind in profile.reads_included)
        several = len(profile.reads_included) > 1
        verb = "prices include their weight reads" if several else "price includes its weight read"
        cell += f"; the {kinds} {verb}"
    return cell


def profiles() -> str:
    """The built-in hardware profiles, from their one definition (``spikegpt.energy.BUILTIN_PROFILES``)."""
    from spikegpt.energy import BUILTIN_PROFILES

    rows = [
        [
            f"`{name}`",
            f"{p.mac_pj:g} pJ",
            f"{p.ac_pj:g} pJ",
            f"{p.neuron_pj:g} pJ",
            f"{p.elementwise_pj:g} pJ",
            weights_read(p),
            p.source,
        ]
        for name, p in BUILTIN_PROFILES.items()
    ]
    return table(["profile", "MAC", "AC", "neuron update", "elementwise", "weights read", "source"], rows)


# ---------------------------------------------------------------- the headline figures (README, home page)


def _int8_headline(when) -> list[list[str]]:
    """The 8-bit decoding row: the int8 step against fp32 at the largest size, 1 thread, batch 1, from
    ``bench/decode.py --placement inputs``."""
    size, entry = list(_decode_int8_sizes().items())[-1]
    threads = min(entry["threads"], key=int)
    b1 = entry["threads"][threads]["b1"]
    densities = next(iter(b1["tok_s"].values()))
    density = "bundled" if "bundled" in densities else next(iter(densities))  # the driven model's, if measured
    tok_s = {mode: by_density[density] for mode, by_density in b1["tok_s"].items()}
    best = max((m for m in tok_s if m.startswith("int8")), key=tok_s.get)
    inputs = "the bundled spike-driven model's densities" if density == "bundled" else _density_words(density)
    threads = f"{threads} thread" + ("" if threads == "1" else "s")
    what = f"int8 decoding, {size.replace('x', ' × ')}, batch 1, {threads}, {inputs}"
    page = "spikes/hardware.md#8-bit-decoding-on-a-cpu"
    return [[what, f"{tok_s[best] / tok_s['fp32']:.2f}× fp32 ({MODE_LABELS[best]})", when(DECODE_INT8), page]]


def headline(docs: str = "") -> str:
    """The key figures, each linking to its page: ``docs`` is the path from the including page to ``docs/``."""
    tail = {r["model"]: r for r in read_records("driven-study-tail.json")[0]["models"]}
    residual = tail["spikegpt/assets/spikegpt-shakespeare"]
    frontier = read_records("frontier.json")[0]
    shipped = next(r for r in frontier["models"] if r["name"] == frontier["shipped"])
    moved = shipped["energy"]["event"]["with_data_movement"]
    twin = read_records("driven-study-tail.json")[0]["twin_bits_per_byte"]
    decode = by_measure(read_records("decode-forms.jsonl"), "decode")
    ours = next(r for r in decode if r["model"] == "spikegpt (ours)")
    hf = next(r for r in decode if r["model"] == "transformers RwkvForCausalLM" and r["n_embd"] == ours["n_embd"])
    event = by_measure(read_records("event_decode-inputs.jsonl"), "summary")[-1]["sizes"]
    largest = list(event)[-1]
    ptq = read_records("hardware_study.json")[0]["ptq"]

    def energy(row: dict) -> str:
        strict = row["energy"]["strict"]
        off = strict["spiking_off_j_per_token"] * 1e6
        return f"{strict['j_per_token'] * 1e6:.2f} µJ/token (spiking off: {off:.2f}, {strict['x_vs_spiking_off']:.2f}×)"

    def when(name: str) -> str:
        machine, date = provenance(name)
        return f"{machine}, {date}"

    study, frontier_when = when("driven-study-tail.json"), when("frontier.json")
    rows = [  # what, the figure, where and when, the page with the whole table
        ["held-out bits per byte, bundled model (Tiny Shakespeare)",
         f"{residual['bits_per_byte']:.4f} (non-spiking twin {twin:.4f})", study, "spikes/frontier.md"],
        [f"held-out bits per byte, spike-driven model ({shipped['name']})",
         f"{shipped['bits_per_byte']:.4f} ({100 * shipped['gap_to_twin']:+.1f}% over its twin; "
         f"{shipped['input_zero_fraction']:.0%} zero inputs, {shipped['spikes_per_input']:.3f} spikes per input)",
         frontier_when, "spikes/frontier.md"],
        ["estimated energy with data movement, 8-bit weights, `event` rule: spike-driven model",
         f"{moved['j_per_token'] * 1e6:.1f} µJ/token, {moved['x_vs_equal_bit_int8']:.1f}× below the dense int8 model",
         frontier_when, "spikes/frontier.md#energy-with-data-movement"],
        ["estimated energy, `strict` rule, 45 nm fp32: bundled model", energy(residual), study,
         "spikes/spike-driven.md"],
        [f"decoding, batch 1, {size_of(ours)}, traced step",
         f"{ours['traced_tok_s']:.0f} tok/s (transformers RWKV {hf['tok_s']:.0f})", when("decode-forms.jsonl"),
         "performance/benchmarks.md#decoding-speed"],
        [f"event-driven decoding, {largest.replace('x', ' × ')}, binary-spike inputs, batch 1",
         f"{event[largest]['b1']['sparse_vs_dense_net']['binary']:.2f}× the dense step",
         when("event_decode-inputs.jsonl"), "performance/kernels.md#event-driven-decoding"],
        *_int8_headline(when),
        ["4-bit weights (post-training), bundled model",
         f"{ptq['4bit']['bits_per_byte'] / ptq['fp32']['bits_per_byte'] - 1:+.2%} bits per byte",
         when("hardware_study.json"), "spikes/hardware.md#the-study"],
    ]  # fmt: skip
    rows = [[f"[{what}]({docs}{page})", figure, measured] for what, figure, measured, page in rows]
    return table(["", "figure", "measured on"], rows)


# ---------------------------------------------------------------- writing


SNIPPETS = {
    "headline.md": headline,
    "bundled-model.md": bundled_model,
    "decode-forms.md": decode_forms,
    "event-decode-inputs.md": lambda: event_decode("inputs"),
    "event-decode-residual.md": lambda: event_decode("residual"),
    "crossover.md": crossover,
    "crossover-int8.md": lambda: crossover("crossover-int8.jsonl"),
    "int8-decode.md": int8_decode,
    "decode-int8.md": decode_int8,
    "driven-study.md": lambda: driven_study("driven-study.json"),
    "driven-study-tail.md": lambda: driven_study("driven-study-tail.json"),
    "driven-projections.md": driven_projections,
    "driven-figure.md": study_figure,
    "frontier.md": lambda: frontier("frontier.json"),
    "frontier-wikitext2.md": lambda: frontier("frontier-wikitext2.json"),
    **{f"hardware-{which}.md": (lambda which=which: hardware_study(which)) for which in HARDWARE_TABLES},
    "profiles.md": profiles,
}
HEADER = "<!-- Generated by docs/gen_figures.py from bench/results/: do not edit. -->\n"
IMAGES = {"frontier.png": ROOT / "docs" / "images" / "frontier.png"}  # figures the benchmarks drew, copied


def readme_with(figures: str, readme: str) -> str:
    """The README with ``figures`` between its markers."""
    before, found, rest = readme.partition(BEGIN)
    _, found_end, after = rest.partition(END)
    if not found or not found_end:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    return f"{before}{BEGIN}\n{figures}\n{END}{after}"


def outputs() -> dict[Path, str | bytes]:
    """Every file this script writes, with its content."""
    files: dict[Path, str | bytes] = {GENERATED / name: HEADER + make() + "\n" for name, make in SNIPPETS.items()}
    files[README] = readme_with(headline(docs="docs/"), README.read_text())
    files.update({path: (RESULTS / name).read_bytes() for name, path in IMAGES.items()})
    return files


def current(path: Path, content: str | bytes) -> bool:
    if not path.is_file():
        return False
    return path.read_bytes() == content if isinstance(content, bytes) else path.read_text() == content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file would change")
    args = parser.parse_args(argv)
    files = outputs()
    stale = [path for path, content in files.items() if not current(path, content)]
    leftover = [path for path in sorted(GENERATED.glob("*")) if path not in files]  # no longer generated
    if args.check:
        for path in stale + leftover:
            print(f"stale: {path.relative_to(ROOT)} (run: python docs/gen_figures.py)", file=sys.stderr)
        return 1 if stale or leftover else 0
    GENERATED.mkdir(exist_ok=True)
    for path in leftover:
        path.unlink()
        print(f"deleted {path.relative_to(ROOT)}")
    for path in stale:
        content = files[path]
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
