"""The ``README.md`` a trained model directory carries: what it is, how it was trained, how well it does."""

from __future__ import annotations

from spikegpt import SpikeGPTConfig
from spikegpt.modeling.layout import spike_layout

from .config import TrainConfig
from .evaluate import EvalResult

ARCHITECTURE_FIELDS = ("n_layer", "n_embd", "ctx_len", "vocab_size", "ffn_hidden", "dropout", "spiking", "lif_tau",
                       "lif_threshold", "lif_reset", "surrogate", "surrogate_alpha", "binary_embedding",
                       "spike_placement")  # fmt: skip
# what the projections' inputs are, for a spike-driven model (spike_placement "inputs")
ENCODING_FIELDS = {"counts": ("input_spikes", "spike_count_max", "spike_count_scale", "learned_thresholds"),
                   "binary": ("input_spikes", "learned_thresholds")}  # fmt: skip


# Hub metadata: transformers loads it, through the checkpoint's own code files (the Hub's "custom_code" tag)
CARD_METADATA = (
    "library_name: transformers",
    "pipeline_tag: text-generation",
    "tags: [spikegpt, spiking-neural-network, rwkv, custom_code]",
)
HOW_TO_LOAD = (
    "Its model code travels with it: `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` and "
    '`pipeline("text-generation", model=DIR, trust_remote_code=True)` load it from the model files saved beside '
    "the weights, with torch and transformers alone; with the `spikegpt` package (`pip install spikegpt`) the "
    "same files run its Triton kernels on a GPU, and `spikegpt generate --model DIR` runs it."
)


def _evaluation_lines(result: EvalResult) -> list[str]:
    lines = [
        f"| loss (nats/token) | {result.loss:.4f} |",
        f"| perplexity | {result.perplexity:.3f} |",
        f"| bits per byte | {result.bits_per_byte:.4f} |",
    ]
    if result.bits_per_character is not None:
        lines.append(f"| bits per character | {result.bits_per_character:.4f} |")
    lines += [f"| tokens evaluated | {result.tokens:,} |", f"| mean firing rate | {result.firing_rate:.4f} |"]
    lines += ["", "| spiking site | firing rate |", "| --- | --- |"]
    lines += [f"| `{site}` | {rate:.4f} |" for site, rate in result.site_rates.items()]
    return lines


def aid_lines(cfg: TrainConfig) -> list[str]:
    """The training aids the run used, one Markdown item each (none: no lines)."""
    lines = []
    if cfg.init_from:
        lines.append(f"- initialised from `{cfg.init_from}` (its tensors, with this run's model options)")
    if cfg.teacher:
        lines.append(f"- distilled from `{cfg.teacher}`: (1 − {cfg.distill_weight:g})·cross-entropy + "
                     f"{cfg.distill_weight:g}·T²·KL at T = {cfg.distill_temperature:g}")  # fmt: skip
    if cfg.threshold_start is not None:
        lines.append(f"- LIF threshold annealed from {cfg.threshold_start:g} over {cfg.threshold_anneal_steps} steps")
    if cfg.spike_count_scale_start is not None:
        lines.append(f"- spike-count scale k annealed from {cfg.spike_count_scale_start:g} (geometric) over "
                     f"{cfg.count_anneal_steps} steps")  # fmt: skip
    if cfg.spike_count_max_start is not None:
        lines.append(f"- largest spike count K annealed from {cfg.spike_count_max_start} over "
                     f"{cfg.count_anneal_steps} steps")  # fmt: skip
    if cfg.spike_penalty:
        target = f" above {cfg.spike_target:g}" if cfg.spike_target is not None else ""
        lines.append(f"- sparsity penalty {cfg.spike_penalty:g} × spikes per input element{target}, ramped over "
                     f"{cfg.spike_penalty_warmup_steps} steps")  # fmt: skip
    return lines


def model_card(
    cfg: TrainConfig,
    config: SpikeGPTConfig,
    steps: int,
    tokens: int,
    wall_time_s: float,
    evaluation: EvalResult | None,
    command: str | None,
) -> str:
    """Markdown with Hub metadata: data, architecture, optimisation, length of the run and validation results."""
    lines = [
        "---",
        *CARD_METADATA,
        "---",
        "",
        f"# SpikeGPT, {config.n_layer} layers × {config.n_embd}",
        "",
        f"A SpikeGPT (spiking RWKV-4) language model trained with the `spikegpt` package. {HOW_TO_LOAD}",
        "",
        "## Training",
        "",
        f"- data: `{cfg.dataset}`"
        + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
        + f", split `{cfg.train_split}`; validation: `{cfg.validation_split}` (or, when absent, the last "
        f"{cfg.validation_fraction:.0%} of the training tokens)",
        f"- steps: {steps:,}; tokens seen: {tokens:,}; wall time: {wall_time_s / 60:.1f} min",
        f"- batch {cfg.batch_size} × grad accumulation {cfg.grad_accum} per process; lr {cfg.lr:g} → {cfg.min_lr:g} "
        f"(cosine, {cfg.warmup_steps} warmup steps); AdamW betas {tuple(cfg.adam_betas)}, eps {cfg.adam_eps:g}, "
        f"weight decay {cfg.weight_decay:g}; grad clip {cfg.grad_clip:g}; precision {cfg.precision}; seed {cfg.seed}",
        *aid_lines(cfg),
        "",
        "| architecture | value |",
        "| --- | --- |",
        *[f"| {name} | {getattr(config, name)} |" for name in ARCHITECTURE_FIELDS],
        *[
            f"| {name} | {getattr(config, name)} |"
            for name in ENCODING_FIELDS.get(config.input_spikes, ())
            if spike_layout(config).spiking_inputs
        ],
    ]
    if evaluation is not None:
        lines += ["", "## Validation", "", "| metric | value |", "| --- | --- |", *_evaluation_lines(evaluation)]
    if command:
        lines += ["", "## Reproduce", "", "```bash", command, "```"]
    return "\n".join(lines) + "\n"
