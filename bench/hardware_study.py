"""The hardware-aware study of a model: bits per byte with quantized weights, under memristive weight noise, and
the energy per token under every hardware profile. Writes (and updates, section by section) one JSON file and
prints each measurement as a JSON line.

Sections (``--sections``):
  ptq     bits per byte on the held-out text for float weights and post-training 8/4/1-bit weights
  qat     the same for quantization-aware fine-tunes (``--qat BITS=DIR``) and for their float control, the same
          fine-tune with float weights (``--qat fp32=DIR``): extra training alone moves bits per byte
  scratch the same for quantization-aware models trained from scratch with the float model's own recipe
          (``--scratch BITS=DIR``), whose control is the float model itself
  decode  the 8-bit model decoded token by token (the recurrent form, as generate/serve run it) with the fp32
          product of its grid weights and with the int8 kernel (``spikegpt.quant.int8``), on the first blocks
  noise   bits per byte under the device model of ``spikegpt.quant.noise`` (lognormal and Gaussian variation,
          stuck-at faults), K seeded draws per point on the first blocks, and the variation at which bits per byte
          degrade by 10% (linear interpolation between the measured points)
  energy  energy per token (strict and paper rules) under every built-in profile, float and quantized weights

    python bench/hardware_study.py --dataset ../shared/data/tinyshakespeare/input.txt --sections ptq noise energy
    python bench/hardware_study.py --dataset ... --sections qat --qat 4=runs/qat4 1=runs/qat1 fp32=runs/ft
    python bench/hardware_study.py --model spikegpt/assets/spikegpt-shakespeare-driven-k4 \
        --out bench/results/hardware_study-inputs.json --dataset ...   # the spike-driven placement
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import emit

from spikegpt.energy import BUILTIN_PROFILES, energy_report, read_spike_stats
from spikegpt.hub.checkpoint import load_model
from spikegpt.quant.noise import DeviceModel
from spikegpt.runtime.products import decode_products
from spikegpt.train.data import PAD, DataSource, eval_stream, load_corpus
from spikegpt.train.evaluate import evaluate, make_eval_set
from spikegpt.train.noise_eval import evaluate_with_noise

LOGNORMAL_SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
GAUSSIAN_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2)
STUCK_RATES = (0.001, 0.01, 0.03, 0.1)


def eval_blocks(tokenizer, dataset: str, ctx_len: int) -> np.ndarray:
    corpus = load_corpus(DataSource(dataset, None, "text", None))
    blocks, unknown = eval_stream(corpus, tokenizer, "validation", "train", 0.1).packed(ctx_len)
    # the sections below count bytes of fully spelt text only (the padding of the last block is not text)
    if unknown is not None and (unknown[blocks != PAD] > 0).any():
        raise SystemExit(f"{dataset}: characters outside the vocabulary; use `spikegpt eval`, which counts them")
    return blocks


def ptq(args, blocks) -> dict:
    out = {}
    for bits in (None, 8, 4, 1):
        model, tokenizer = load_model(args.model, weight_bits=bits)
        result = evaluate(model, make_eval_set(blocks, tokenizer), args.batch_size, progress=False)
        key = "fp32" if bits is None else f"{bits}bit"
        out[key] = {"bits_per_byte": result.bits_per_byte, "firing_rate": result.firing_rate, "bytes": result.bytes}
        emit({"section": "ptq", "weights": key, **out[key]})
    return out


def trained(specs: list[str], section: str, args, blocks) -> dict:
    """Bits per byte of trained models given as ``BITS=DIR`` (``fp32=DIR``: a float control)."""
    out = {}
    for spec in specs:
        bits, path = spec.split("=", 1)
        key = "fp32" if bits == "fp32" else f"{bits}bit"
        model, tokenizer = load_model(path)
        result = evaluate(model, make_eval_set(blocks, tokenizer), args.batch_size, progress=False)
        out[key] = {"model": path, "bits_per_byte": result.bits_per_byte, "firing_rate": result.firing_rate,
                    "weight_bits": model.config.weight_bits}  # fmt: skip
        emit({"section": section, "weights": key, **out[key]})
    return out


@torch.inference_mode()
def recurrent_bits_per_byte(model, blocks: np.ndarray, n_bytes: int) -> float:
    """Every block read one token at a time with the recurrent state, all blocks as one batch."""
    ids = torch.from_numpy(blocks.astype(np.int64))
    state, loss = model.fresh_state(ids.shape[0]), 0.0
    for t in range(ids.shape[1] - 1):
        out = model(ids[:, t : t + 1], state=state)
        state = out.state
        loss += float(F.cross_entropy(out.logits[:, -1].float(), ids[:, t + 1], ignore_index=PAD, reduction="sum"))
    return loss / math.log(2) / n_bytes


def decode(args, blocks) -> dict:
    full = blocks[(blocks != PAD).all(axis=1)][: args.decode_blocks]
    model, tokenizer = load_model(args.model, weight_bits=8)
    n_bytes = make_eval_set(full, tokenizer).n_bytes
    out = {"blocks": len(full), "bytes": n_bytes}
    out["8bit_fp32_product"] = recurrent_bits_per_byte(model, full, n_bytes)
    with decode_products(model, "dense", int8=True):
        out["8bit_int8_kernel"] = recurrent_bits_per_byte(model, full, n_bytes)
    emit({"section": "decode", **out})
    return out


def degradation_point(points: list[tuple[float, float]], clean: float, threshold: float = 0.10) -> float | None:
    """The variation at which bits per byte first reach (1 + threshold) × clean, interpolated linearly."""
    target = clean * (1 + threshold)
    previous = (0.0, clean)
    for sigma, bpb in points:
        if bpb >= target:
            (s0, b0), (s1, b1) = previous, (sigma, bpb)
            return s0 + (target - b0) * (s1 - s0) / (b1 - b0) if b1 != b0 else s1
        previous = (sigma, bpb)
    return None


def noise(args, blocks) -> dict:
    model, tokenizer = load_model(args.model)
    eval_set = make_eval_set(blocks, tokenizer, args.noise_blocks)
    clean = evaluate(model, eval_set, args.batch_size, progress=False).bits_per_byte
    out = {"blocks": args.noise_blocks, "bytes": eval_set.n_bytes, "draws": args.draws, "clean_bits_per_byte": clean}
    emit({"section": "noise", "clean_bits_per_byte": clean})
    sweeps = {
        "lognormal": [DeviceModel(sigma=s, kind="lognormal") for s in LOGNORMAL_SIGMAS],
        "gaussian": [DeviceModel(sigma=s, kind="gaussian") for s in GAUSSIAN_SIGMAS],
        "stuck_at": [DeviceModel(sigma=0.0, stuck_rate=p) for p in STUCK_RATES],
    }
    for name, devices in sweeps.items():
        rows = []
        for device in devices:
            started = time.perf_counter()
            result = evaluate_with_noise(model, eval_set, device, args.draws, 0, args.batch_size, progress=False)
            rows.append(result.to_dict())
            emit({"section": "noise", "sweep": name, **result.to_dict(), "wall_s": time.perf_counter() - started})
        level = "stuck_rate" if name == "stuck_at" else "sigma"
        points = [(row["device"][level], row["bits_per_byte_mean"]) for row in rows]
        out[name] = {"points": rows, "degrades_10pct_at": degradation_point(points, clean)}
        emit({"section": "noise", "sweep": name, "degrades_10pct_at": out[name]["degrades_10pct_at"]})
    return out


def energy(args, blocks) -> dict:
    out = {}
    for bits in (None, 8, 4, 1):
        model, _ = load_model(args.model, weight_bits=bits)
        ids = blocks[(blocks != PAD)][: args.energy_tokens].tolist()
        stats = read_spike_stats(model, ids, progress=False)
        key = "fp32" if bits is None else f"{bits}bit"
        out[key] = {}
        for name, profile in BUILTIN_PROFILES.items():
            out[key][name] = {
                rule: energy_report(stats, model.config, rule, profile).energy_j_per_token
                for rule in ("strict", "paper")
            }
        emit({"section": "energy", "weights": key, "tokens": len(ids), "j_per_token": out[key]})
    return out


def percent(value: float, base: float) -> str:
    return f"{value:.4f} ({value / base - 1:+.2%})"


WIDTHS = ("fp32", "8bit", "4bit", "1bit")


def bits_columns(studies: list[dict]) -> list[str]:
    return ["post-training", "QAT fine-tune"] + (["QAT from scratch"] if any("scratch" in s for s in studies) else [])


def bits_cells(study: dict, key: str, scratch: bool) -> list[str]:
    """Bits per byte of one weight width: post-training, quantization-aware fine-tune (against its float control
    when there is one, and against fp32), and, with ``scratch``, trained from scratch (against fp32, whose own
    recipe it followed)."""
    fp32 = study["ptq"]["fp32"]["bits_per_byte"]
    control = study.get("qat", {}).get("fp32", {}).get("bits_per_byte")
    post = study["ptq"][key]["bits_per_byte"]
    cells = [f"{post:.4f}" if key == "fp32" else percent(post, fp32)]
    aware = study.get("qat", {}).get(key, {}).get("bits_per_byte")
    if aware is None:
        cells.append("-")
    elif key == "fp32":
        cells.append(f"{aware:.4f} (float fine-tune)")
    elif control:
        cells.append(f"{aware:.4f} ({aware / control - 1:+.2%} vs float fine-tune; {aware / fp32 - 1:+.2%} vs fp32)")
    else:
        cells.append(percent(aware, fp32))
    if scratch:
        own = study.get("scratch", {}).get(key, {}).get("bits_per_byte")
        cells.append("-" if own is None or key == "fp32" else percent(own, fp32))
    return cells


def markdown(results: dict) -> str:
    """The study tables (README, model card, closing note) from the JSON."""
    lines = []
    ptq = results.get("ptq", {})
    meta = results.get("meta", {})
    if meta.get("model"):
        lines += [f"Model `{meta['model']}` (spike placement `{meta.get('spike_placement', 'residual')}`).", ""]
    if ptq:
        what = bits_columns([results])
        lines += ["| weights | " + " | ".join(what) + " |", "| --- |" + " --- |" * len(what)]
        for key in WIDTHS:
            lines.append(f"| {key} | " + " | ".join(bits_cells(results, key, "scratch" in results)) + " |")
        lines.append("")
    decode = results.get("decode")
    if decode:
        lines.append(
            f"8-bit decoding, token by token over the first {decode['blocks']} blocks: "
            f"{decode['8bit_fp32_product']:.4f} bits/byte with the fp32 product of the grid weights, "
            f"{decode['8bit_int8_kernel']:.4f} with the int8 kernel."
        )
        lines.append("")
    noise = results.get("noise")
    if noise:
        lines += [f"Weight noise (first {noise['blocks']} blocks, {noise['draws']} draws each; clean "
                  f"{noise['clean_bits_per_byte']:.4f} bits/byte):", "",
                  "| device model | level | bits/byte (mean ± std) |", "| --- | --- | --- |"]  # fmt: skip
        for sweep, level in (("lognormal", "sigma"), ("gaussian", "sigma"), ("stuck_at", "stuck_rate")):
            for row in noise.get(sweep, {}).get("points", []):
                value = row["device"][level]
                mean, std = row["bits_per_byte_mean"], row["bits_per_byte_std"]
                lines.append(f"| {sweep} | {level} {value:g} | {mean:.4f} ± {std:.4f} |")
        lines.append("")
        for sweep in ("lognormal", "gaussian", "stuck_at"):
            at = noise.get(sweep, {}).get("degrades_10pct_at")
            lines.append(f"- {sweep}: +10% bits/byte at {'beyond the sweep' if at is None else f'{at:.3g}'}")
        lines.append("")
    energy_rows = results.get("energy")
    if energy_rows:
        profiles = list(next(iter(energy_rows.values())))
        lines += ["| weights | " + " | ".join(f"`{p}`" for p in profiles) + " |", "| --- |" + " --- |" * len(profiles)]
        for key, per_profile in energy_rows.items():
            cells = [f"{per_profile[p]['strict'] * 1e6:.3g} / {per_profile[p]['paper'] * 1e6:.3g}" for p in profiles]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "(µJ per processed token, strict / paper rule; logits at every position, as when scoring a text; "
            "post-training weights; the spikes are measured on the first tokens of the held-out text)"
        )
    return "\n".join(lines)


def compare_markdown(studies: list[dict]) -> str:
    """The study tables of several models side by side (README): bits per byte by weight width, the noise level
    at which bits per byte degrade by 10%, and the energy per token under every profile (strict rule)."""
    names = [f"`{s['meta'].get('spike_placement', 'residual')}`" for s in studies]
    scratch = any("scratch" in study for study in studies)
    what = bits_columns(studies)
    lines = ["| weights | " + " | ".join(f"{n} {w}" for n in names for w in what) + " |",
             "| --- |" + " --- |" * (len(what) * len(studies))]  # fmt: skip
    for key in WIDTHS:
        cells = [cell for study in studies for cell in bits_cells(study, key, scratch)]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| device model: +10% bits/byte at | " + " | ".join(names) + " |"]
    lines.append("| --- |" + " --- |" * len(studies))
    for sweep, level in (("lognormal", "σ (ln-space)"), ("gaussian", "σ (of the tile range)"), ("stuck_at", "rate")):
        cells = []
        for study in studies:
            at = study.get("noise", {}).get(sweep, {}).get("degrades_10pct_at")
            cells.append("beyond the sweep" if at is None else f"{at:.3g}")
        lines.append(f"| {sweep} {level} | " + " | ".join(cells) + " |")
    profiles = list(next(iter(studies[0]["energy"].values())))
    lines += ["", "| placement, weights | " + " | ".join(f"`{p}`" for p in profiles) + " |",
              "| --- |" + " --- |" * len(profiles)]  # fmt: skip
    for name, study in zip(names, studies, strict=True):
        for key, per_profile in study["energy"].items():
            cells = [f"{per_profile[p]['strict'] * 1e6:.3g}" for p in profiles]
            lines.append(f"| {name}, {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the float model (default: the bundled one)")
    parser.add_argument("--dataset", help="the corpus whose held-out 10%% is evaluated")
    parser.add_argument("--sections", nargs="+", default=["ptq", "decode", "noise", "energy"],
                        choices=["ptq", "qat", "scratch", "decode", "noise", "energy"])  # fmt: skip
    parser.add_argument("--qat", nargs="*", default=[], metavar="BITS=DIR", help="quantization-aware fine-tunes")
    parser.add_argument("--scratch", nargs="*", default=[], metavar="BITS=DIR",
                        help="quantization-aware models trained from scratch")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--noise-blocks", type=int, default=64, help="blocks for the noise sweeps (default: 64)")
    parser.add_argument("--draws", type=int, default=5, help="seeded draws per noise point (default: 5)")
    parser.add_argument("--decode-blocks", type=int, default=16, help="blocks decoded token by token (default: 16)")
    parser.add_argument("--energy-tokens", type=int, default=4096, help="tokens read for the energy (default: 4096)")
    parser.add_argument("--out", default="bench/results/hardware_study.json", help="JSON file to write/update")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="only print the study tables of --out")
    parser.add_argument("--compare", nargs="+", metavar="JSON", help="only print these studies' tables side by side")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if args.compare:
        print(compare_markdown([json.loads(Path(f).read_text()) for f in args.compare]))
        return
    if not args.dataset:
        parser.error("--dataset is required to measure")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    blocks = eval_blocks(tokenizer, args.dataset, model.config.ctx_len)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("meta", {}).update(
        model=args.model or "spikegpt/assets/spikegpt-shakespeare", spike_placement=model.config.spike_placement
    )
    sections = {
        "ptq": ptq,
        "qat": lambda args, blocks: trained(args.qat, "qat", args, blocks),
        "scratch": lambda args, blocks: trained(args.scratch, "scratch", args, blocks),
        "decode": decode,
        "noise": noise,
        "energy": energy,
    }
    for name in args.sections:
        results[name] = sections[name](args, blocks)
        results.setdefault("meta", {})[name] = {"torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
