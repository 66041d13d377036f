"""The quality–sparsity frontier of spike-driven models (issue 22): train a list of settings, evaluate each on the
whole held-out tail, and write one JSON of results with a Markdown table and a figure generated from it.

A settings file (``bench/frontier.yaml``) names a base training config, the non-spiking twin (the reference row,
the source of conversions and the teacher of distillations: ``twin`` in a setting's ``init_from`` or ``teacher``
stands for it) and the settings, each a name and ``spikegpt train`` options (TrainConfig names, model fields under
``model:``) laid over the base config. For each setting, in order:

  - train it with ``spikegpt train`` in its own process on one thread (``OMP_NUM_THREADS=1``) into
    ``RUNS/NAME``: a finished run (its final model written, its last checkpoint at the run's last step) is skipped,
    an interrupted one resumes from its newest checkpoint (``--resume latest``), exactly; a setting whose options
    changed since its run started is refused (delete ``RUNS/NAME`` or rename it);
  - evaluate it on the whole held-out tail (``bench/driven_study.py``'s evaluation, which is ``spikegpt eval``'s):
    bits per byte, gap to the twin, zero fraction and spikes per input element overall, per kind of product
    (``att.key``, ``ffn.value``, ...) and per projection; the steps spent in total (a converted model counts its
    twin's); kept in ``RUNS/NAME/frontier-row.json`` until the model changes;
  - its energy per token (``energy_figures``) and event-driven decoding speed-up (``decode_speedups``, with
    ``--decode-speedup``, one timed run of ``bench/decode.py`` for every model at the end).

Then ``--out`` (one JSON), ``--markdown`` (the table) and ``--figure`` (bits per byte against spikes per input,
the twin, the goal and the int8 twin marked) are written; ``--render`` redraws the table and figure from a JSON.

    HF_DATASETS_OFFLINE=1 python bench/frontier.py --settings bench/frontier.yaml --runs-dir runs/frontier \\
        --dataset ../shared/data/tinyshakespeare/input.txt --jobs 2
    python bench/frontier.py --render bench/results/frontier.json     # the table and figure again
    # a pilot of the harness itself: 3 steps each, 4 held-out blocks, into a scratch directory
    python bench/frontier.py --runs-dir /tmp/frontier-pilot --max-steps 3 --eval-max-blocks 4 \\
        --only counts-k4 convert-k1-distil-anneal --out /tmp/frontier-pilot/frontier.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, run as scripts

from decode import product_kind  # noqa: E402
from driven_study import evaluate_model, trained_steps  # noqa: E402

from spikegpt.train.checkpointing import checkpoints, load_trainer_state  # noqa: E402
from spikegpt.train.config import default_config_path, read_config_file  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RULES = ("strict", "event")
# the goals of issue 22 (in the study, never in test assertions)
GOAL_GAP, GOAL_ZEROS, GOAL_SPIKES = 0.03, 0.90, 0.10
GOAL_STRICT_X_INT8, GOAL_EVENT_X_INT8, GOAL_DECODE_X = 1.0, 3.0, 2.0  # energy with data movement; decode speed-up
TWIN = "twin"  # stands for the twin's model in a setting's init_from / teacher
ROW_FILE, CONFIG_FILE = "frontier-row.json", "frontier-config.yaml"


@dataclass
class Setting:
    name: str
    about: str
    options: dict
    model: str | None = None  # an already trained model (a directory or bundled name), evaluated as it is
    steps: int | None = None  # its training steps, for such a model

    def uses_twin(self, option: str) -> bool:
        return self.options.get(option) == TWIN


@dataclass
class Plan:
    """A settings file, read and checked."""

    base_config: dict
    twin_model: str | None  # None while the twin is to be trained (``twin_training``) into RUNS/twin
    twin_steps: int
    settings: list[Setting]
    profile: str | None
    twin_training: Setting | None = None


# and "_name" entries: YAML anchors
PLAN_KEYS = {"dataset", "eval_dataset", "base_config", "twin", "profile", "settings", "shipped"}


def read_plan(path: Path) -> Plan:
    data = read_config_file(path)
    unknown = sorted(k for k in set(data) - PLAN_KEYS if not k.startswith("_"))
    if unknown:
        raise SystemExit(f"{path}: unknown entry {unknown[0]!r}; known: {', '.join(sorted(PLAN_KEYS))}")
    base = data.get("base_config", "shakespeare-driven")
    base_path = Path(base) if Path(base).suffix else default_config_path(base)
    base_config = read_config_file(base_path)
    twin = data.get("twin") or {}
    twin_training = None
    if "train" in twin:  # trained here first, like a setting: its options over the base config
        twin_training = Setting(TWIN, "the non-spiking twin", twin["train"])
        twin = {"model": None, "steps": twin["train"].get("max_steps", base_config.get("max_steps"))}
    if "model" not in twin or "steps" not in twin:
        raise SystemExit(f"{path}: 'twin' needs 'model' (a directory or bundled name) and 'steps' (its training), "
                         "or 'train' (its options)")  # fmt: skip
    settings = [
        Setting(s["name"], s.get("about", ""), s.get("options") or {}, s.get("model"), s.get("steps"))
        for s in data.get("settings", [])
    ]
    for setting in settings:
        if setting.model is not None and (setting.options or setting.steps is None):
            raise SystemExit(f"{path}: {setting.name}: a trained 'model' takes its 'steps' and no 'options'")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: setting names must be unique")
    model = None if twin["model"] is None else str(twin["model"])
    return Plan(base_config, model, int(twin["steps"]), settings, data.get("profile"), twin_training)


def twin_path(plan: Plan) -> str:
    """The twin's directory (a bundled name resolved)."""
    from spikegpt.train.trainer import model_source

    if plan.twin_model is None:
        raise SystemExit("the twin is not trained yet")
    return model_source(plan.twin_model)


def run_config(plan: Plan, setting: Setting, max_steps: int | None) -> dict:
    """The base config with the setting's options over it (model fields merged), ``twin`` resolved."""
    config = {**plan.base_config, **{k: v for k, v in setting.options.items() if k != "model"}}
    config["model"] = {**plan.base_config.get("model", {}), **setting.options.get("model", {})}
    for option in ("init_from", "teacher"):
        if setting.uses_twin(option):
            config[option] = twin_path(plan)
    if max_steps is not None:
        config["max_steps"] = max_steps
    config.pop("output_dir", None)  # the harness says where
    return config


# -- training ---------------------------------------------------------------------------------------------------


def run_state(out: Path, config: dict) -> str:
    """'finished', 'interrupted' (a checkpoint to resume from) or 'new'."""
    saved = checkpoints(out)
    if not saved:
        return "new"
    last = load_trainer_state(saved[-1])["step"]
    done = (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    return "finished" if done and last >= config["max_steps"] else "interrupted"


def train_command(out: Path, dataset: str, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "spikegpt.cli", "train", "--config", str(out / CONFIG_FILE),
               "--dataset", dataset, "--output-dir", str(out)]  # fmt: skip
    return command + (["--resume", "latest"] if resume else [])


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}


def start_run(out: Path, config: dict, dataset: str) -> subprocess.Popen | None:
    """Launch the setting's training (None when it is finished); its log goes to ``out/train.log``."""
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=True)
    written = out / CONFIG_FILE
    if written.is_file() and written.read_text() != text and checkpoints(out):
        raise SystemExit(f"{out}: its settings changed since its run started; delete it or rename the setting")
    state = run_state(out, config)
    if state == "finished":
        return None
    written.write_text(text)
    log = open(out / "train.log", "a")  # noqa: SIM115 (the child process writes it; closed when it ends)
    print(f"{out.name}: {state}, training", file=sys.stderr)
    return subprocess.Popen(train_command(out, dataset, state == "interrupted"), stdout=log, stderr=log,
                            env=one_thread_env(), cwd=ROOT)  # fmt: skip


def train_all(plan: Plan, runs: Path, dataset: str, max_steps: int | None, jobs: int) -> None:
    """The twin's run where the plan trains it (first: the others start from it), then every setting's run, at most
    ``jobs`` at a time."""
    if plan.twin_training is not None:
        twin = start_run(runs / TWIN, run_config(plan, plan.twin_training, max_steps), dataset)
        if twin is not None and twin.wait() != 0:
            raise SystemExit(f"the twin's training failed; see {runs / TWIN / 'train.log'}")
        plan.twin_model = str(runs / TWIN)
    pending = [(s, run_config(plan, s, max_steps)) for s in plan.settings if s.model is None]
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < jobs:
            setting, config = pending.pop(0)
            process = start_run(runs / setting.name, config, dataset)
            if process is not None:
                running[setting.name] = process
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                if process.returncode != 0:
                    raise SystemExit(f"{name}: training failed ({process.returncode}); see {runs / name / 'train.log'}")
        time.sleep(1 if running else 0)


# -- the hooks of the energy and decoding work ------------------------------------------------------------------


def energy_figures(model_dir: str | Path, text: Path, max_tokens: int, profile: str | None = None) -> dict:
    """Energy per token of the model at ``model_dir`` reading ``text`` (its first ``max_tokens`` tokens) with 8-bit
    weights (post-training, one scale per output channel: the goal compares 8-bit weights on both sides), under
    ``strict`` and ``event``: joules per token of operations and the ratios to ``spiking_off`` and
    ``equal_bit_int8`` (a ratio above 1: the model spends less), and ``with_data_movement``: the same with the
    weight bytes each product read priced in (``spikegpt energy --json``'s ``total_*``)."""
    figures = {}
    for rule in RULES:
        command = [sys.executable, "-m", "spikegpt.cli", "energy", "--model", str(model_dir), "--text", str(text),
                   "--max-tokens", str(max_tokens), "--rule", rule, "--weight-bits", "8", "--json"]  # fmt: skip
        if profile:
            command += ["--profile", profile]
        done = subprocess.run(command, capture_output=True, text=True, env=one_thread_env(), cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"spikegpt energy failed on {model_dir}: {done.stderr.strip()[-500:]}")
        report = json.loads(done.stdout)
        baselines = report["baselines"]
        figures[rule] = {
            "profile": report["profile"],
            "weight_memory": report["weight_memory"],
            "j_per_token": report["energy_j_per_token"],
            "x_vs_spiking_off": baselines["spiking_off"]["ratio"],
            "x_vs_equal_bit_int8": baselines["equal_bit_int8"]["ratio"],
            "with_data_movement": {
                "j_per_token": report["total_j_per_token"],
                "weight_bytes_per_token": report["weight_bytes"] / report["tokens"],
                "x_vs_spiking_off": baselines["spiking_off"]["total_ratio"],
                "x_vs_equal_bit_int8": baselines["equal_bit_int8"]["total_ratio"],
            },
        }
    return figures


def decode_speedups(row_files: list[Path], tokens: int = 32) -> dict[Path, dict[str, float]]:
    """Event-driven over dense decoding (12 × 768, batch 1, one thread, the engine's traced step on random weights)
    at each model's measured active fraction per kind of product (its row file), in fp32 and with 8-bit weights
    (int8 event-driven over int8 dense), from one run of ``bench/decode.py`` (net of its input synthesis). Timing:
    run it on a quiet machine."""
    command = [sys.executable, str(ROOT / "bench" / "decode.py"), "--placement", "inputs", "--sizes", "12x768",
               "--batches", "1", "--modes", "fp32", "fp32_sparse", "int8", "int8_sparse", "--tokens", str(tokens),
               "--threads", "1", "--no-peers", "--no-generate", "--densities", *map(str, row_files)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=one_thread_env(), cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench/decode.py failed: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    b1 = summary["sizes"]["12x768"]["threads"]["1"]["b1"]
    return {
        path: {"fp32": b1["vs_dense"]["fp32_sparse"][str(path)], "int8": b1["int8_event_vs_int8_dense"][str(path)]}
        for path in row_files
    }


# -- evaluation -------------------------------------------------------------------------------------------------


def by_kind(inputs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Zero fraction and spikes per input per kind of product, over its layers (each layer reads as many elements
    of a kind, so the plain mean is the mean per element)."""
    kinds: dict[str, list[dict[str, float]]] = {}
    for name, read in inputs.items():
        kinds.setdefault(product_kind(name), []).append(read)
    return {
        kind: {key: sum(r[key] for r in reads) / len(reads) for key in ("zero_fraction", "spikes_per_input")}
        for kind, reads in kinds.items()
    }


def aids_of(config: dict) -> list[str]:
    """The training aids a run's config turns on, by name."""
    model = config.get("model", {})
    aids = {
        "conversion": config.get("init_from"),
        "distillation": config.get("teacher"),
        "threshold annealing": config.get("threshold_start") is not None,
        "scale annealing": config.get("spike_count_scale_start") is not None,
        "K annealing": config.get("spike_count_max_start") is not None,
        "learned thresholds": model.get("learned_thresholds"),
        "sparsity penalty": config.get("spike_penalty"),
    }
    return [name for name, on in aids.items() if on]


def goals(row: dict) -> dict[str, bool]:
    """Which of issue 22's goals the row meets; the energy and decoding goals only where they were measured."""
    met = {
        f"within {GOAL_GAP:.0%} of the twin": row["gap_to_twin"] is not None and row["gap_to_twin"] <= GOAL_GAP,
        f">= {GOAL_ZEROS:.0%} zero inputs": row["input_zero_fraction"] >= GOAL_ZEROS,
        f"<= {GOAL_SPIKES} spikes per input": row["spikes_per_input"] <= GOAL_SPIKES,
    }
    energy = row.get("energy") or {}
    for rule, least, words in (
        ("strict", GOAL_STRICT_X_INT8, "below"),
        ("event", GOAL_EVENT_X_INT8, f">= {GOAL_EVENT_X_INT8:g}x below"),
    ):
        memory = (energy.get(rule) or {}).get("with_data_movement")
        if memory:
            ratio = memory["x_vs_equal_bit_int8"]
            met[f"{rule} energy with memory {words} int8"] = ratio > least if rule == "strict" else ratio >= least
    if row.get("decode_speedup") is not None:
        met[f"event-driven decoding >= {GOAL_DECODE_X:g}x dense"] = row["decode_speedup"] >= GOAL_DECODE_X
    return met


def cached(cache: Path, model_dir: str | Path, max_blocks: int | None, compute) -> dict:
    """``compute()``'s row for the model at ``model_dir``, kept in ``cache`` while the model file and the number of
    blocks evaluated stay the same."""
    stamp = (Path(model_dir) / "model.safetensors").stat().st_mtime
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("model_mtime") == stamp and kept.get("max_blocks") == max_blocks:
            return kept
    row = {**compute(), "model_mtime": stamp, "max_blocks": max_blocks}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2) + "\n")
    return row


def measured_row(name: str, model_dir: str | Path, args, weight_bits: int | None = None) -> dict:
    """The model's held-out row: evaluation, spikes per kind of product, and the hooks' figures."""
    print(f"{name}: evaluating", file=sys.stderr)
    dataset, split = (args.eval_dataset, "train") if args.eval_dataset else (args.dataset, "validation")
    row, _, _ = evaluate_model(str(model_dir), dataset, args.batch_size, args.eval_max_blocks, weight_bits, split)
    row = {"name": name, **row, "by_kind": by_kind(row["inputs"])}
    if args.energy and weight_bits is None:
        row["energy"] = energy_figures(model_dir, heldout_text(args), args.energy_tokens, args.profile)
    return row


def heldout_text(args) -> Path:
    """The held-out tenth of the corpus as a text file (for ``spikegpt energy``), written once into the runs; or
    the evaluation file itself."""
    if args.eval_dataset:
        return Path(args.eval_dataset)
    path = Path(args.runs_dir) / "heldout.txt"
    if not path.is_file():
        text = Path(args.dataset).read_text(encoding="utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text[int(0.9 * len(text)) :], encoding="utf-8")
    return path


def twin_rows(plan: Plan, args) -> tuple[dict, dict]:
    """The twin, and the twin with 8-bit weights (the int8 baseline's quality), on the same held-out text."""
    path, runs, blocks = twin_path(plan), Path(args.runs_dir), args.eval_max_blocks
    twin = cached(runs / "twin-row.json", path, blocks, lambda: measured_row("non-spiking twin", path, args))
    int8 = cached(runs / "twin-int8-row.json", path, blocks,
                  lambda: measured_row("twin, 8-bit weights", path, args, weight_bits=8))  # fmt: skip
    return {**twin, "steps_total": plan.twin_steps}, {**int8, "steps_total": plan.twin_steps}


def setting_row(plan: Plan, setting: Setting, args, twin_bpb: float) -> dict:
    out = Path(args.runs_dir) / setting.name
    if setting.model is not None:  # trained before: its own config, its own steps
        from spikegpt.train.trainer import model_source

        model_dir = Path(model_source(setting.model))
        config, steps = {"model": json.loads((model_dir / "config.json").read_text())}, setting.steps
    else:
        model_dir, config, steps = out, yaml.safe_load((out / CONFIG_FILE).read_text()), trained_steps(out) or 0
    row = cached(out / ROW_FILE, model_dir, args.eval_max_blocks, lambda: measured_row(setting.name, model_dir, args))
    row.update(
        about=setting.about,
        aids=aids_of(config),
        options=setting.options,
        steps=steps,
        steps_total=steps + (plan.twin_steps if setting.uses_twin("init_from") else 0),
        gap_to_twin=row["bits_per_byte"] / twin_bpb - 1,
    )
    row["goals"] = goals(row)
    return row


# -- rendering --------------------------------------------------------------------------------------------------


def _energy_cell(row: dict, rule: str) -> str:
    figures = (row.get("energy") or {}).get(rule)
    if not figures:
        return "—"
    cell = f"{figures['j_per_token'] * 1e6:.2f} µJ · {figures['x_vs_equal_bit_int8']:.2f}×"
    memory = figures.get("with_data_movement")
    if not memory:
        return cell
    ratio = memory["x_vs_equal_bit_int8"]  # near 1 under dense rules (the same bytes read): a third decimal
    return cell + f" ({memory['j_per_token'] * 1e6:.2f} µJ · {ratio:.{3 if ratio < 2 else 2}f}×)"


def _encoding(row: dict) -> str:
    if row["input_spikes"] == "counts":
        return f"counts K {row['spike_count_max']}, k {row['spike_count_scale']:g}"
    return row["input_spikes"] or row["spike_placement"]


def markdown(results: dict) -> str:
    """The frontier table (one row per model) and the per-kind table, from the JSON."""
    head = ("| setting | encoding | aids | steps (total) | bits/byte | gap to twin | zero inputs | spikes/input "
            "| strict µJ/token · × int8 | event µJ/token · × int8 | decode × fp32 / int8 | targets met |")  # fmt: skip
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in (results["twin"], results["int8_twin"]):
        lines.append(f"| {r['name']} | — | — | {r['steps_total']} | {r['bits_per_byte']:.4f} | — "
                     f"| {r['input_zero_fraction']:.3f} | — "
                     f"| {_energy_cell(r, 'strict')} | {_energy_cell(r, 'event')} | — | — |")  # fmt: skip
    for r in results["models"]:
        met = sum(r["goals"].values())
        speedup = f"{r['decode_speedup']:.2f} / {r['decode_speedup_int8']:.2f}" if r.get("decode_speedup") else "—"
        lines.append(
            f"| {r['name']} | {_encoding(r)} | {', '.join(r['aids']) or '—'} | {r['steps']} ({r['steps_total']}) "
            f"| {r['bits_per_byte']:.4f} | {100 * r['gap_to_twin']:+.1f}% | {r['input_zero_fraction']:.3f} "
            f"| {r['spikes_per_input']:.3f} | {_energy_cell(r, 'strict')} | {_energy_cell(r, 'event')} | {speedup} "
            f"| {met}/{len(r['goals'])} |"
        )
    kinds = list(results["models"][0]["by_kind"]) if results["models"] else []
    lines += ["", "Zero fraction / spikes per input element by kind of product:", ""]
    lines.append("| setting | " + " | ".join(f"`{k}`" for k in kinds) + " |")
    lines.append("| --- |" + " --- |" * len(kinds))
    for r in results["models"]:
        cells = [f"{r['by_kind'][k]['zero_fraction']:.2f} / {r['by_kind'][k]['spikes_per_input']:.3f}" for k in kinds]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    note = (f"Targets: within {GOAL_GAP:.0%} bits per byte of the twin, >= {GOAL_ZEROS:.0%} zero inputs, <= "
            f"{GOAL_SPIKES} spikes per input element. Energy: `spikegpt energy` on the first "
            f"{results['energy_tokens']} held-out tokens, 8-bit weights, operations only; in brackets, with "
            "the weight bytes each product read (data movement). × int8: the equal-bit dense int8 model's energy "
            "over the model's (above 1: the model spends less).")  # fmt: skip
    return "\n".join(lines) + "\n\n" + note + "\n"


def figure(results: dict, path: Path) -> None:
    """Bits per byte against spikes per input element (log scale), one point per model, the twin, the goal and the
    twin with 8-bit weights marked."""
    from spikegpt.energy.render import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    twin = results["twin"]["bits_per_byte"]
    colours = {"counts": "tab:blue", "binary": "tab:orange"}
    for r in results["models"]:
        x = max(r["spikes_per_input"], 1e-3)
        ax.scatter(x, r["bits_per_byte"], color=colours.get(r["input_spikes"], "tab:gray"), zorder=3)
        ax.annotate(r["name"], (x, r["bits_per_byte"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(twin, color="black", lw=1, label=f"non-spiking twin ({twin:.3f})")
    ax.axhline(results["int8_twin"]["bits_per_byte"], color="tab:green", lw=1, ls=":",
               label=f"twin, 8-bit weights ({results['int8_twin']['bits_per_byte']:.3f})")  # fmt: skip
    ax.axhline(twin * (1 + GOAL_GAP), color="black", lw=1, ls="--", label=f"goal: twin + {GOAL_GAP:.0%}")
    ax.axvline(GOAL_SPIKES, color="tab:red", lw=1, ls="--", label=f"goal: <= {GOAL_SPIKES} spikes per input")
    ax.fill_between([1e-3, GOAL_SPIKES], 0, twin * (1 + GOAL_GAP), color="tab:red", alpha=0.06, lw=0)
    for encoding, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"input spikes: {encoding}")
    ax.set_xscale("log")
    spikes = [max(r["spikes_per_input"], 1e-3) for r in results["models"]] or [GOAL_SPIKES]
    ax.set_xlim(min(min(spikes) / 2, 0.02), max(max(spikes) * 2, 1.0))
    values = [r["bits_per_byte"] for r in results["models"]] + [twin]
    ax.set_ylim(min(values) - 0.05, max(values) + 0.05)
    where = "held-out tail" if results["max_blocks"] is None else f"first {results['max_blocks']} held-out blocks"
    ax.set_xlabel(f"spikes per input element (all block products, {where})")
    ax.set_ylabel(f"bits per byte ({where})")
    ax.set_title("Spike-driven SpikeGPT: quality against sparsity")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render(results: dict, markdown_path: Path | None, figure_path: Path | None) -> None:
    if markdown_path:
        markdown_path.write_text(markdown(results))
    if figure_path:
        figure(results, figure_path)


# -- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=str(ROOT / "bench" / "frontier.yaml"), help="the settings file")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "frontier"), help="one directory per setting")
    parser.add_argument("--dataset", default=None, help="the corpus (default: the settings file's 'dataset')")
    parser.add_argument("--eval-dataset", default=None, help="evaluate on the whole of this text file instead of "
                        "the corpus's held-out tail (default: the settings file's 'eval_dataset', if any)")  # fmt: skip
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these settings only")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once, one thread each (default 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="override every run's length (pilots)")
    parser.add_argument("--eval-max-blocks", type=int, default=None, help="evaluate on the first N held-out blocks "
                        "only (pilots; default: the whole tail)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per evaluation batch (default 16)")
    parser.add_argument("--no-energy", dest="energy", action="store_false", help="skip the energy figures")
    parser.add_argument("--energy-tokens", type=int, default=4096, help="held-out tokens spikegpt energy reads")
    parser.add_argument("--profile", default=None, help="energy profile (default: the settings file's, else 45nm-fp32)")
    parser.add_argument("--decode-speedup", action="store_true", help="time event-driven decoding (bench/decode.py) "
                        "at each model's measured density: minutes per model, on a quiet machine")  # fmt: skip
    parser.add_argument("--train-only", action="store_true", help="train the settings and stop (evaluate later)")
    parser.add_argument("--out", default=str(RESULTS / "frontier.json"), help="the results JSON")
    parser.add_argument("--markdown", default=None, help="the table (default: beside --out, .md)")
    parser.add_argument("--figure", default=None, help="the figure (default: beside --out, .png)")
    parser.add_argument("--render", metavar="JSON", default=None, help="only redraw the table and figure of a JSON")
    args = parser.parse_args(argv)
    out = Path(args.render or args.out)
    markdown_path = Path(args.markdown) if args.markdown else out.with_suffix(".md")
    figure_path = Path(args.figure) if args.figure else out.with_suffix(".png")
    if args.render:
        render(json.loads(out.read_text()), markdown_path, figure_path)
        return 0

    import torch

    torch.set_num_threads(1)
    plan = read_plan(Path(args.settings))
    args.dataset = args.dataset or read_config_file(Path(args.settings)).get("dataset")
    args.eval_dataset = args.eval_dataset or read_config_file(Path(args.settings)).get("eval_dataset")
    if not args.dataset:
        raise SystemExit("say which corpus: --dataset or 'dataset' in the settings file")
    args.profile = args.profile or plan.profile
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in plan.settings})
        if unknown:
            raise SystemExit(f"no setting {unknown[0]!r} in {args.settings}")
        plan.settings = [s for s in plan.settings if s.name in args.only]
    runs = Path(args.runs_dir)
    if plan.twin_training is not None and (runs / TWIN / "model.safetensors").is_file():
        plan.twin_model = str(runs / TWIN)  # (train_all checks that its run finished)
    train_all(plan, runs, args.dataset, args.max_steps, args.jobs)
    if args.train_only:
        return 0
    twin, int8 = twin_rows(plan, args)
    rows = [setting_row(plan, s, args, twin["bits_per_byte"]) for s in plan.settings]
    if args.decode_speedup:
        spiking = {runs / row["name"] / ROW_FILE: row for row in rows if row["input_spikes"] is not None}
        for path, speedup in decode_speedups(list(spiking)).items():
            row = spiking[path]
            row["decode_speedup"], row["decode_speedup_int8"] = speedup["fp32"], speedup["int8"]
            row["goals"] = goals(row)
    results = {
        "settings": str(args.settings),
        "dataset": args.dataset,
        "eval_dataset": args.eval_dataset,
        "max_blocks": args.eval_max_blocks,
        "max_steps_override": args.max_steps,
        "energy_tokens": args.energy_tokens,
        "goals": {"gap_to_twin": GOAL_GAP, "zero_inputs": GOAL_ZEROS, "spikes_per_input": GOAL_SPIKES},
        # the setting whose model ships as a bundled model, if the settings file names one
        "shipped": read_config_file(Path(args.settings)).get("shipped"),
        "twin": twin,
        "int8_twin": int8,
        "models": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    render(results, markdown_path, figure_path)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
