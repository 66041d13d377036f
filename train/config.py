"""``TrainConfig``: every option of a training run, read from a YAML or JSON file and overridden by flags.

The file holds the same names as the flags (underscores for dashes); model architecture fields sit under
``model:`` and are any ``SpikeGPTConfig`` field. Unknown names are errors, so a typo never trains silently with a
default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spikegpt.errors import ConfigError, TrainingError
from spikegpt.modeling.config import WEIGHT_BITS, check_weight_bits

PRECISIONS = ("fp32", "bf16", "fp16")
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
DEFAULT_MODEL = {"n_layer": 4, "n_embd": 128, "ctx_len": 128}


@dataclass
class TrainConfig:
    """Options of a training run; ``help`` metadata is the text ``--help`` shows."""

    # model
    model: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "SpikeGPTConfig fields (n_layer, n_embd, ctx_len, dropout, spiking, ...); a fresh model starts "
            f"from {DEFAULT_MODEL}; with --init-from they override the checkpoint's config"
        },
    )
    init_from: str | None = field(
        default=None, metadata={"help": "start from this checkpoint (directory or Hub id) instead of a fresh model"}
    )
    # data
    dataset: str | None = field(
        default=None,
        metadata={"help": "a Hub dataset name, or a local text/json/jsonl/parquet file, directory or glob"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration name"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    validation_split: str = field(
        default="validation",
        metadata={"help": "split to evaluate on; when the dataset has none, it is made from the training split"},
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "when there is no validation split: the last fraction of the training tokens is held out"},
    )
    validation_documents: int = field(
        default=1000,
        metadata={"help": "with --streaming and no validation split: the first N documents are held out"},
    )
    text_field: str = field(default="text", metadata={"help": "column holding the text (json/jsonl/parquet/Hub)"})
    streaming: bool = field(default=False, metadata={"help": "stream the training split instead of loading it"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory (default: HF's)"})
    # tokenizer
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "'char' (a character vocabulary of the training text), 'bpe' (byte-level BPE trained on it), "
            "or a tokenizer.json / directory / Hub id (default: the --init-from model's, else 'char')"
        },
    )
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary size of a trained BPE tokenizer"})
    # optimisation (the original SpikeGPT's defaults: lr 6e-4 -> 1e-5 cosine, Adam betas (0.9, 0.99), clip 1.0)
    batch_size: int = field(default=8, metadata={"help": "sequences per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    lr: float = field(default=6e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear warmup from 0 to --lr"})
    lr_decay_steps: int | None = field(
        default=None,
        metadata={"help": "step at which the cosine decay reaches --min-lr (default: the run's last step)"},
    )
    lr_cycles: int = field(
        default=1,
        metadata={"help": "cosine cycles between warmup and the end of the decay, each restarting at --lr (warm "
                  "restarts, as the quantized-SNN recipe uses); 1 = one plain cosine decay"},
    )  # fmt: skip
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on weight matrices"})
    adam_betas: tuple[float, float] = field(default=(0.9, 0.99), metadata={"help": "Adam beta1 and beta2"})
    # The original's eps 4e-9 is representable in fp32 (and harmless next to torch's 1e-8); accelerate's mixed
    # precision keeps fp32 parameters and so fp32 Adam moments. Only a pure fp16 optimizer state would turn it into 0
    # (fp16's smallest subnormal is 6e-8).
    adam_eps: float = field(default=4e-9, metadata={"help": "Adam epsilon (the original's)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this; 0 = off"})
    precision: str = field(
        default="fp32", metadata={"help": "fp32, or bf16/fp16 mixed precision via accelerate", "choices": PRECISIONS}
    )
    export_dtype: str = field(
        default="fp32",
        metadata={
            "help": "dtype of the final model's weights: fp32, or bf16/fp16 for half the size (time_decay and "
            "time_first stay fp32); checkpoints are always fp32",
            "choices": PRECISIONS,
        },
    )
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    # spiking extras
    threshold_start: float | None = field(
        default=None,
        metadata={"help": "threshold annealing: LIF threshold at step 0, ramped linearly to the model's threshold"},
    )
    threshold_anneal_steps: int = field(
        default=0, metadata={"help": "steps over which the LIF threshold ramps from --threshold-start to its target"}
    )
    spike_count_scale_start: float | None = field(
        default=None,
        metadata={"help": "scale annealing of spike counts: k (threshold mean|x| / k) at step 0, ramped "
                  "geometrically to the model's spike_count_scale over --count-anneal-steps; a larger k starts "
                  "dense (more nonzero inputs), a smaller target ends sparse"},
    )  # fmt: skip
    spike_count_max_start: int | None = field(
        default=None,
        metadata={"help": "K annealing of spike counts: the largest count at step 0, ramped linearly (to whole "
                  "numbers) to the model's spike_count_max over --count-anneal-steps, e.g. 4 -> 1 (ternary)"},
    )  # fmt: skip
    count_anneal_steps: int = field(
        default=0, metadata={"help": "steps over which --spike-count-scale-start and --spike-count-max-start ramp"}
    )
    weight_bits: int | None = field(
        default=None,
        metadata={
            "help": "quantization-aware training: every product computes with its weights fake-quantized to this "
            "many bits (8, 4, or 1 = binarized; per-output-channel scales, straight-through gradient); the final "
            "model is exported on that grid (fp32, weight_bits in its config)",
            "choices": WEIGHT_BITS,
        },
    )
    l2wrap: bool = field(
        default=False, metadata={"help": "the original's L2Wrap: penalise each position's largest logit (1e-4)"}
    )
    # training aids of spike-driven models (conversion: --init-from a non-spiking checkpoint with --spike-placement
    # inputs and the encoding's options; the run logs which tensors are new)
    teacher: str | None = field(
        default=None,
        metadata={"help": "distillation: a model (directory, bundled name or Hub id) with the same tokenizer whose "
                  "next-token distribution the model learns; it runs in the same process, in eval mode, without "
                  "gradients"},
    )  # fmt: skip
    distill_weight: float = field(
        default=0.5,
        metadata={"help": "with --teacher: the objective is (1 - w) x cross-entropy + w x T^2 x KL(teacher || "
                  "model), both distributions at temperature T"},
    )  # fmt: skip
    distill_temperature: float = field(
        default=2.0, metadata={"help": "with --teacher: the temperature T of both distributions in the KL term"}
    )
    spike_penalty: float = field(
        default=0.0,
        metadata={"help": "sparsity penalty (spike-driven models): adds this weight x the spikes per input element "
                  "(mean |count| over every projection's input; above --spike-target only) to the objective"},
    )  # fmt: skip
    spike_target: float | None = field(
        default=None,
        metadata={"help": "with --spike-penalty: spikes per input element below which nothing is added"},
    )
    spike_penalty_warmup_steps: int = field(
        default=0, metadata={"help": "with --spike-penalty: steps over which its weight ramps up from 0"}
    )
    # length of the run
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps to train for"})
    max_tokens: int | None = field(
        default=None, metadata={"help": "train until this many tokens (all processes) were seen"}
    )
    # evaluation, checkpoints, logs
    eval_interval: int = field(
        default=500, metadata={"help": "evaluate every N steps (and at the end); 0 = only at the end"}
    )
    eval_max_blocks: int | None = field(
        default=None, metadata={"help": "evaluate on at most this many ctx_len blocks (default: the whole split)"}
    )
    save_interval: int = field(default=500, metadata={"help": "write a checkpoint every N steps (and at the end)"})
    keep_last: int = field(default=3, metadata={"help": "checkpoints to keep (older ones are deleted)"})
    log_interval: int = field(default=10, metadata={"help": "log metrics every N steps"})
    output_dir: str = field(
        default="runs/spikegpt", metadata={"help": "directory for checkpoints, logs and the final model"}
    )
    seed: int = field(default=1337, metadata={"help": "random seed (weights, data order, dropout)"})
    resume: str | None = field(
        default=None,
        metadata={"help": "continue a run: 'latest' (the newest checkpoint in --output-dir) or a checkpoint directory"},
    )
    # publishing
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final model to the Hugging Face Hub"})
    hub_id: str | None = field(
        default=None, metadata={"help": "Hub repository for --push-to-hub, e.g. user/spikegpt-tiny"}
    )
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repository as private"})

    def __post_init__(self) -> None:
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        self.check()

    def check(self) -> None:
        """Raise ``TrainingError`` naming the first invalid option."""
        if not isinstance(self.model, dict):
            raise TrainingError(f"model must be a mapping of SpikeGPTConfig fields, got {self.model!r}")
        for name in ("precision", "export_dtype"):
            if getattr(self, name) not in PRECISIONS:
                raise TrainingError(f"{name} must be one of {', '.join(PRECISIONS)}, got {getattr(self, name)!r}")
        for name in ("batch_size", "grad_accum", "keep_last", "log_interval", "vocab_size", "lr_cycles"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "eval_interval",
            "save_interval",
            "threshold_anneal_steps",
            "count_anneal_steps",
            "spike_penalty_warmup_steps",
            "validation_documents",
        ):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise TrainingError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise TrainingError(f"need 0 <= min_lr <= lr and lr > 0, got lr {self.lr}, min_lr {self.min_lr}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise TrainingError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.threshold_start is not None and self.threshold_anneal_steps == 0:
            raise TrainingError("threshold_start needs threshold_anneal_steps > 0 (the length of the ramp)")
        self._check_aids()
        if self.weight_bits is not None:
            try:
                check_weight_bits(self.weight_bits)
            except ConfigError as e:
                raise TrainingError(str(e)) from e
            if self.export_dtype != "fp32":
                raise TrainingError("weight_bits needs export_dtype fp32: only fp32 holds every grid value exactly")
        if self.push_to_hub and not self.hub_id:
            raise TrainingError("--push-to-hub needs --hub-id (e.g. your-name/spikegpt-tiny)")

    def _check_aids(self) -> None:
        """The training aids' options on their own (what the model must be for them: ``Trainer``)."""
        starts = [n for n in ("spike_count_scale_start", "spike_count_max_start") if getattr(self, n) is not None]
        if starts and self.count_anneal_steps == 0:
            raise TrainingError(f"{starts[0]} needs count_anneal_steps > 0 (the length of the ramp)")
        if self.spike_count_scale_start is not None and not self.spike_count_scale_start > 0:
            raise TrainingError(f"spike_count_scale_start must be positive, got {self.spike_count_scale_start}")
        if self.spike_count_max_start is not None and self.spike_count_max_start < 1:
            raise TrainingError(f"spike_count_max_start must be at least 1, got {self.spike_count_max_start}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise TrainingError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not self.distill_temperature > 0:
            raise TrainingError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if self.spike_penalty < 0:
            raise TrainingError(f"spike_penalty must be 0 (off) or positive, got {self.spike_penalty}")
        if self.spike_target is not None and (self.spike_target < 0 or self.spike_penalty == 0):
            raise TrainingError("spike_target needs spike_penalty > 0 and must be 0 or more")

    def run_length_given(self) -> None:
        if self.max_steps is None and self.max_tokens is None:
            raise TrainingError("say how long to train: --max-steps or --max-tokens (or max_steps in the config)")

    def fresh_model_fields(self) -> dict[str, Any]:
        """SpikeGPTConfig fields of a model trained from scratch."""
        return {**DEFAULT_MODEL, **self.model}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (JSON is YAML, so one parser reads both)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first_line = str(e).strip().splitlines()[0]
        raise TrainingError(f"{path}: not valid YAML or JSON ({first_line})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: a config file must hold a mapping of option names to values")
    return data


def make_config(file_values: dict[str, Any], overrides: dict[str, Any], source: str = "config") -> TrainConfig:
    """A ``TrainConfig`` from a config file's values, then flag ``overrides`` (model fields under ``model``)."""
    unknown = sorted(set(file_values) - set(FIELDS))
    if unknown:
        raise TrainingError(f"{source}: unknown option {unknown[0]!r}; known options: {', '.join(FIELDS)}")
    values = dict(file_values)
    model = dict(values.get("model") or {})
    model.update(overrides.pop("model", {}))
    values.update(overrides)
    values["model"] = model
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise TrainingError(f"{source}: {e}") from e


def default_config_path(name: str) -> Path:
    """One of the example configs shipped with the package (``configs/NAME.yaml``)."""
    return Path(__file__).parent / "configs" / f"{name}.yaml"


def dump_config(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
