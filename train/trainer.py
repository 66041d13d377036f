"""The training loop on ``accelerate``: one code path for a CPU, a GPU, or many processes (``accelerate launch``).

Per optimizer step: the learning rate and the annealed settings (LIF threshold, the spike counts' scale and K) are
set from their schedules, ``grad_accum`` micro-batches are run (gradients synchronised across processes only on
the last; the objective is ``objective.Objective``'s, with a teacher's logits when distilling), the gradient norm
is clipped and the optimizer steps. The loss and spike counts stay on the device between log steps, so the loop
only waits for the device when it logs.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.errors import ConfigError, TrainingError
from spikegpt.hub.checkpoint import BUNDLED_MODELS, bundled_model_path, load_model
from spikegpt.hub.tokenizer import load_tokenizer
from spikegpt.modeling.layout import spike_layout
from spikegpt.quant.grids import quantize_model_
from spikegpt.runtime.products import fake_quantized_products

from .checkpointing import DataPosition, export_model, load_trainer_state, resolve_resume, save_checkpoint
from .config import ACCELERATE_PRECISION, TrainConfig
from .data import DataSource, load_corpus, training_data
from .evaluate import EvalResult, SpikeTotals, evaluate, make_eval_set
from .metrics import MetricsLog
from .model_card import model_card
from .nodes import share_tokenizer, shared_output_dir
from .objective import InputSpikeRate, Objective
from .schedule import learning_rate, lif_threshold, spike_count_max, spike_count_scale
from .vocabulary import resolve_tokenizer

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the config fields that schedules anneal: the run's own value is each one's target (kept in every checkpoint)
ANNEALED = ("lif_threshold", "spike_count_scale", "spike_count_max")


@dataclass
class TrainSummary:
    steps: int
    tokens: int
    wall_time_s: float
    output_dir: Path
    evaluation: EvalResult | None


def model_source(name: str) -> str:
    """A model's location: a bundled model's directory for its name (``spikegpt-shakespeare-twin``), else as given
    (a directory or Hub id)."""
    return str(bundled_model_path(name)) if name in BUNDLED_MODELS and not Path(name).exists() else name


def build_model(cfg: TrainConfig, tokenizer, resume_from: Path | None = None) -> SpikeGPTForCausalLM:
    """A fresh model sized for ``tokenizer``, the ``--init-from`` one with ``cfg.model`` overriding its config, or
    (resuming) one shaped by the checkpoint's config, whose weights come with the rest of its state."""
    try:
        if resume_from is not None:
            return SpikeGPTForCausalLM(SpikeGPTConfig.from_pretrained(resume_from))
        if cfg.init_from is None:
            config = SpikeGPTConfig(
                vocab_size=len(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **cfg.fresh_model_fields(),
            )
            return SpikeGPTForCausalLM(config)
        model = converted_model(model_source(cfg.init_from), cfg.model)
    except TypeError as e:
        raise ConfigError(f"invalid model option: {e}") from e
    if len(tokenizer) > model.config.vocab_size:
        raise TrainingError(
            f"the tokenizer has {len(tokenizer)} tokens but {cfg.init_from} only {model.config.vocab_size}"
        )
    return model


def converted_model(source: str, overrides: dict) -> SpikeGPTForCausalLM:
    """The model at ``source`` (fp32) with ``overrides`` replacing fields of its config: conversion, e.g. of a
    non-spiking model into a spike-driven one. Every tensor the two architectures share is the checkpoint's; the
    tensors only the new one has (learned thresholds) start from their initialisation, and the checkpoint's
    tensors it has no place for are left behind: both are logged by name. A tensor whose shape changed is an
    error (the architecture is not the same)."""
    model, info = SpikeGPTForCausalLM.from_pretrained(
        source, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True, **overrides
    )
    if info["mismatched_keys"]:
        shapes = sorted(info["mismatched_keys"])[:5]
        names = ", ".join(f"{k} {tuple(saved)} -> {tuple(new)}" for k, saved, new in shapes)
        raise TrainingError(f"--init-from {source}: the options change the shape of {names}")
    kept = len(model.state_dict()) - len(info["missing_keys"])
    logger.info("initialised from %s: %d tensors kept; new (initialised): %s; left behind: %s", source, kept,
                ", ".join(sorted(info["missing_keys"])) or "none",
                ", ".join(sorted(info["unexpected_keys"])) or "none")  # fmt: skip
    return model


def load_teacher(cfg: TrainConfig, tokenizer, device) -> SpikeGPTForCausalLM | None:
    """The ``--teacher`` model on ``device``: eval mode, no gradients, the same tokenizer as the run's (the
    distillation compares distributions over the same tokens)."""
    if cfg.teacher is None:
        return None
    teacher, teacher_tokenizer = load_model(cfg.teacher)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise TrainingError(f"--teacher {cfg.teacher}: its tokenizer is not the run's (distillation needs the same)")
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def _check_aids(cfg: TrainConfig, config: SpikeGPTConfig) -> None:
    """The training aids that need a particular model, against the model being trained."""
    spike_driven = spike_layout(config).spiking_inputs
    counts = spike_driven and config.input_spikes == "counts"
    starts = [n for n in ("spike_count_scale_start", "spike_count_max_start") if getattr(cfg, n) is not None]
    if starts and not counts:
        raise TrainingError(f"{starts[0]} needs a model whose projections read spike counts (--spike-placement "
                            "inputs --input-spikes counts)")  # fmt: skip
    if cfg.spike_penalty and not spike_driven:
        raise TrainingError("spike_penalty needs a spike-driven model (--spike-placement inputs, spiking on)")


def _warn_unfinished_ramps(cfg: TrainConfig, total_steps: int) -> None:
    """A ramp still under way at the last step leaves the final model at its target, which it was not trained at."""
    counts_start = cfg.spike_count_scale_start or cfg.spike_count_max_start  # (neither can be 0)
    for name, start in (("threshold_anneal_steps", cfg.threshold_start), ("count_anneal_steps", counts_start)):
        if start is not None and getattr(cfg, name) >= total_steps:
            logger.warning("%s (%d) reaches past the run's last step (%d): the final model is saved with the "
                           "target value it did not train at", name, getattr(cfg, name), total_steps)  # fmt: skip


def _run_tokenizer(accelerator, cfg: TrainConfig, corpus, resume_from: Path | None):
    """The run's tokenizer: a resumed run's own (every machine holds its checkpoint); otherwise resolved once by
    the main process and sent to the others (a learnt vocabulary must be the same on every process)."""
    if resume_from is not None:
        return load_tokenizer(resume_from)
    init_from = model_source(cfg.init_from) if cfg.init_from else None
    return share_tokenizer(
        accelerator, lambda: resolve_tokenizer(cfg.tokenizer, init_from, corpus, cfg.train_split, cfg.vocab_size)
    )


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the projection matrices only (not embeddings, norms, decays or mixing ratios)."""
    decay, rest = [], []
    for name, param in model.named_parameters():
        (decay if param.dim() == 2 and not name.endswith("emb.weight") else rest).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def _total_steps(cfg: TrainConfig, tokens_per_step: int) -> int:
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(limits)


def _eval_record(step: int, tokens: int, result: EvalResult) -> dict:
    # per-projection reads stay out of the log (``spikegpt eval`` prints them); their total zero fraction is in
    fields = {k: v for k, v in result.to_dict().items() if v is not None and k != "inputs"}
    return {"step": step, "tokens": tokens, **{f"val_{k}": v for k, v in fields.items()}}


class Trainer:
    """One training run: set up from a ``TrainConfig`` (resuming when asked), then ``run()``. Every process of an
    ``accelerate launch`` builds its own."""

    def __init__(self, cfg: TrainConfig, command: str | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg.run_length_given()
        if not cfg.dataset:
            raise TrainingError("say what to train on: --dataset (a Hub name or a local file, directory or glob)")
        self.cfg, self.command = cfg, command
        # accelerate only forms a multi-process CPU group (gloo) when told it runs on the CPU
        cpu = cfg.cpu or not torch.cuda.is_available()
        self.accelerator = accelerator = Accelerator(mixed_precision=ACCELERATE_PRECISION[cfg.precision], cpu=cpu)
        self.main, rank, self.world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
        self.output_dir = Path(cfg.output_dir)
        logger.info("process %d of %d on %s (%s)", rank, self.world, accelerator.device, accelerator.distributed_type)
        if accelerator.is_local_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # without a shared filesystem every machine keeps whole checkpoints in its own output directory
        self.per_node = not shared_output_dir(accelerator, self.output_dir)
        accelerator.project_configuration.save_on_each_node = self.per_node
        if self.per_node and self.main:
            logger.info("the machines do not share %s: each keeps its own checkpoints there", self.output_dir)
        resume_from = resolve_resume(cfg.resume, self.output_dir, accelerator) if cfg.resume else None
        set_seed(cfg.seed)  # the same initial weights on every process

        with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
            source = DataSource(cfg.dataset, cfg.dataset_config, cfg.text_field, cfg.cache_dir, cfg.streaming)
            corpus = load_corpus(source)
        self.tokenizer = _run_tokenizer(accelerator, cfg, corpus, resume_from)
        model = build_model(cfg, self.tokenizer, resume_from)
        _check_aids(cfg, model.config)
        self.ctx_len = model.config.ctx_len
        with accelerator.main_process_first():
            self.data = training_data(corpus, self.tokenizer, cfg, self.ctx_len, rank, self.world)
        validation = self.data.validation
        self.eval_set = (
            make_eval_set(validation, self.tokenizer, cfg.eval_max_blocks, self.data.validation_unknown)
            if validation is not None
            else None
        )
        n_params = sum(p.numel() for p in model.parameters())
        if cfg.weight_bits is not None:
            # product modules in place of the Linears, before prepare: the wrappers then hold them
            fake_quantized_products(model, cfg.weight_bits).install()

        self.model, self.optimizer = accelerator.prepare(model, _optimizer(model, cfg))
        self.unwrapped = accelerator.unwrap_model(self.model)
        # save_state / load_state carry the data position along with the weights, optimizer, scaler and RNGs
        accelerator.register_for_checkpointing(DataPosition(self.data.batches, rank, self.world))
        self.tokens_per_step = cfg.batch_size * self.ctx_len * cfg.grad_accum * self.world
        self.total_steps = _total_steps(cfg, self.tokens_per_step)
        self.decay_steps = cfg.lr_decay_steps or self.total_steps
        _warn_unfinished_ramps(cfg, self.total_steps)
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.anneal_targets = {name: getattr(self.unwrapped.config, name) for name in ANNEALED}
        self.teacher = load_teacher(cfg, self.tokenizer, accelerator.device)
        self.objective = Objective(cfg)
        self.spike_rate = InputSpikeRate(self.unwrapped) if cfg.spike_penalty else None
        if resume_from is not None:
            self._restore(resume_from)
        else:
            set_seed(cfg.seed + 1 + rank)  # dropout differs across processes
        if self.main:
            config = self.unwrapped.config
            logger.info(
                "model: %.2fM parameters, %d layers x %d, ctx %d, vocab %d, spiking %s; %d processes on %s; "
                "%d tokens per step, %d steps",
                n_params / 1e6, config.n_layer, config.n_embd, self.ctx_len, config.vocab_size, config.spiking,
                self.world, accelerator.device, self.tokens_per_step, self.total_steps,
            )  # fmt: skip
        resume_step = self.step if resume_from is not None else None
        self.metrics = MetricsLog(self.output_dir, resume_step=resume_step) if self.main else None
        self.started = time.perf_counter()

    def _restore(self, checkpoint: Path) -> None:
        state = load_trainer_state(checkpoint)
        if state["world_size"] != self.world:
            raise TrainingError(
                f"{checkpoint} was written by {state['world_size']} processes; resume it with {state['world_size']}"
            )
        self.accelerator.load_state(str(checkpoint))  # weights, optimizer, scaler, this process's RNG, data position
        self.step, self.tokens_seen, self.elapsed_before = state["step"], state["tokens"], state["wall_time_s"]
        # (checkpoints written before scale and K annealing hold the threshold's target alone)
        self.anneal_targets.update(state.get("anneal_targets") or {"lif_threshold": state["lif_threshold_target"]})
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    def wall_time(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def run(self) -> TrainSummary:
        cfg, accelerator, model = self.cfg, self.accelerator, self.model
        batches = iter(self.data.batches)
        window = _Window(self.unwrapped, accelerator.device)
        evaluation = None
        progress = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                        disable=None if self.main else True, mininterval=2.0)  # fmt: skip
        model.train()
        while self.step < self.total_steps:
            lr = learning_rate(self.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.decay_steps, cfg.lr_cycles)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._anneal()
            for micro in range(cfg.grad_accum):
                self._micro_step(next(batches), sync=micro == cfg.grad_accum - 1, window=window)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            window.steps += 1
            progress.update(1)
            last = self.step == self.total_steps
            if self.step % cfg.log_interval == 0 or last:
                self._log(window, lr, grad_norm, progress)
                window = _Window(self.unwrapped, accelerator.device)
            if last or (cfg.eval_interval and self.step % cfg.eval_interval == 0):
                evaluation = self.evaluate()
            if last or (cfg.save_interval and self.step % cfg.save_interval == 0):
                self._save(evaluation)
        progress.close()
        return self._finish(evaluation)

    def _anneal(self) -> None:
        """The annealed config fields at this step, from their schedules and targets."""
        cfg, config, target = self.cfg, self.unwrapped.config, self.anneal_targets
        step = self.step
        config.lif_threshold = lif_threshold(step, cfg.threshold_start, target["lif_threshold"],
                                             cfg.threshold_anneal_steps)  # fmt: skip
        config.spike_count_scale = spike_count_scale(step, cfg.spike_count_scale_start, target["spike_count_scale"],
                                                     cfg.count_anneal_steps)  # fmt: skip
        config.spike_count_max = spike_count_max(step, cfg.spike_count_max_start, target["spike_count_max"],
                                                 cfg.count_anneal_steps)  # fmt: skip

    def _micro_step(self, block: np.ndarray, sync: bool, window: _Window) -> None:
        """Forward and backward of one micro-batch; gradients are all-reduced only when ``sync``."""
        accelerator, cfg = self.accelerator, self.cfg
        ids = torch.from_numpy(block.astype(np.int64)).to(accelerator.device)  # full blocks: no padding
        with nullcontext() if sync else accelerator.no_sync(self.model), accelerator.autocast():
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(ids[:, :-1]).logits
            out = self.model(ids[:, :-1], shift_labels=ids[:, 1:], output_spike_stats=True)
            spike_rate = self.spike_rate.rate() if self.spike_rate is not None else None
            objective, terms = self.objective(self.step, out.loss, out.logits, teacher_logits, spike_rate)
        accelerator.backward(objective / cfg.grad_accum)
        window.loss_sum += out.loss.detach() / cfg.grad_accum
        for name, value in terms.items():
            window.terms[name] = window.terms.get(name, 0.0) + value / cfg.grad_accum
        window.spikes.add(out.spike_stats)

    def _log(self, window: _Window, lr: float, grad_norm, progress) -> None:
        """The only host sync of the loop: mean loss and firing rate since the last log, over all processes."""
        mean_loss = float(self.accelerator.reduce(window.loss_sum, reduction="mean")) / window.steps
        if not math.isfinite(mean_loss):
            raise TrainingError(f"the loss became {mean_loss} at step {self.step}; lower --lr or raise --warmup-steps")
        window.spikes.reduce(self.accelerator)
        record = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": window.steps * self.tokens_per_step / (time.perf_counter() - window.started),
            "firing_rate": float(window.spikes.stats().firing_rate()),
            **self._annealed_values(),
            **self._aid_terms(window),
            "wall_time_s": self.wall_time(),
        }
        progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                             fire=f"{record['firing_rate']:.3f}")  # fmt: skip
        if self.main:
            self.metrics.write(record)

    def _annealed_values(self) -> dict:
        """The annealed fields' values now: the LIF threshold, and the counts' scale and K where the model reads
        counts."""
        config = self.unwrapped.config
        values = {"lif_threshold": config.lif_threshold}
        if self.unwrapped.layout.spiking_inputs and config.input_spikes == "counts":
            values.update(spike_count_scale=config.spike_count_scale, spike_count_max=config.spike_count_max)
        return values

    def _aid_terms(self, window: _Window) -> dict:
        """The window's mean distillation term (T²·KL), and the zero fraction and spikes per element of the
        projections' inputs over the window (spike-driven models)."""
        terms = {name: float(self.accelerator.reduce(total, reduction="mean")) / window.steps
                 for name, total in window.terms.items()}  # fmt: skip
        if self.unwrapped.layout.spiking_inputs:
            totals = window.spikes.input_totals()
            terms.update(zero_inputs=totals["zero_fraction"], spikes_per_input=totals["spikes_per_input"])
        return terms

    def evaluate(self) -> EvalResult | None:
        """The validation set, shared among the processes (None when there is none)."""
        if self.eval_set is None:
            return None
        result = evaluate(self.unwrapped, self.eval_set, self.cfg.batch_size, accelerator=self.accelerator)
        if self.main:
            self.metrics.write(_eval_record(self.step, self.tokens_seen, result), prefix="eval")
            logger.info("step %d: validation loss %.4f, %.4f bits/byte, firing rate %.4f",
                        self.step, result.loss, result.bits_per_byte, result.firing_rate)  # fmt: skip
        return result

    def _save(self, evaluation: EvalResult | None) -> None:
        trainer_state = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "wall_time_s": self.wall_time(),
            "world_size": self.world,
            "anneal_targets": self.anneal_targets,
            "config": self.cfg.to_dict(),
            "command": self.command,
            "validation": evaluation.to_dict() if evaluation is not None else None,
        }
        save_checkpoint(self.accelerator, self.unwrapped.config, self.tokenizer, trainer_state, self.output_dir,
                        self.cfg.keep_last, per_node=self.per_node)  # fmt: skip

    def _finish(self, evaluation: EvalResult | None) -> TrainSummary:
        """The final model into the output directory (and the Hub)."""
        cfg, wall_time = self.cfg, self.wall_time()
        state_dict = self.accelerator.get_state_dict(self.model)  # every process: FSDP and ZeRO-3 gather shards
        if self.main:
            for name, target in self.anneal_targets.items():
                setattr(self.unwrapped.config, name, target)
            if self.spike_rate is not None:
                self.spike_rate.remove()
            if cfg.weight_bits is not None:  # the fake-quantized function, now in the weights themselves
                quantize_model_(self.unwrapped, cfg.weight_bits)
            card = model_card(cfg, self.unwrapped.config, self.step, self.tokens_seen, wall_time, evaluation,
                              self.command)  # fmt: skip
            export_model(self.unwrapped, state_dict, self.tokenizer, self.output_dir, card,
                         dtype=EXPORT_DTYPES[cfg.export_dtype])  # fmt: skip
            self.metrics.close()
            logger.info("trained %d steps (%d tokens) in %.0f s; model in %s", self.step, self.tokens_seen,
                        wall_time, self.output_dir)  # fmt: skip
            if cfg.push_to_hub:
                from .hub import push_model

                push_model(self.output_dir, cfg.hub_id, private=cfg.hub_private)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return TrainSummary(self.step, self.tokens_seen, wall_time, self.output_dir, evaluation)


class _Window:
    """Loss and spikes summed on the device since the last log."""

    def __init__(self, model, device):
        self.loss_sum = torch.zeros((), device=device)
        self.terms: dict[str, torch.Tensor] = {}  # the objective's extra terms (``Objective``), summed
        self.spikes = SpikeTotals(model, device)
        self.steps = 0
        self.started = time.perf_counter()


def train(cfg: TrainConfig, command: str | None = None) -> TrainSummary:
    """Run training as ``cfg`` says; returns what it did. Every process of an ``accelerate launch`` calls this."""
    return Trainer(cfg, command).run()
