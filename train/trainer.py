"""The training loop on ``accelerate``: one code path for a CPU, a GPU, or many processes (``accelerate launch``).

Per optimizer step: the learning rate and LIF threshold are set from their schedules, ``grad_accum``
micro-batches are run (gradients synchronised across processes only on the last), the gradient norm is clipped
and the optimizer steps. The loss and spike counts stay on the device between log steps, so the loop only waits
for the device when it logs.
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
from spikegpt.hub.tokenizer import load_tokenizer
from spikegpt.quant.grids import enable_fake_quantization, quantize_model_

from .checkpointing import DataPosition, export_model, load_trainer_state, resolve_resume, save_checkpoint
from .config import ACCELERATE_PRECISION, TrainConfig
from .data import DataSource, load_corpus, training_data
from .evaluate import EvalResult, SpikeTotals, evaluate, make_eval_set
from .metrics import MetricsLog
from .model_card import model_card
from .nodes import share_tokenizer, shared_output_dir
from .schedule import learning_rate, lif_threshold
from .vocabulary import resolve_tokenizer

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
L2WRAP_FACTOR = 1e-4  # the original SpikeGPT's L2Wrap (src/model.py)


@dataclass
class TrainSummary:
    steps: int
    tokens: int
    wall_time_s: float
    output_dir: Path
    evaluation: EvalResult | None


def l2wrap_penalty(logits: torch.Tensor) -> torch.Tensor:
    """The original's L2Wrap written as a loss term: ½·1e-4·mean(max logit²) has gradient 1e-4·max/(B·T) at each
    position's largest logit, the gradient L2Wrap injects, which keeps logits from drifting upwards."""
    return 0.5 * L2WRAP_FACTOR * logits.float().amax(dim=-1).square().mean()


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
        model = SpikeGPTForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32, **cfg.model)
    except TypeError as e:
        raise ConfigError(f"invalid model option: {e}") from e
    if len(tokenizer) > model.config.vocab_size:
        raise TrainingError(
            f"the tokenizer has {len(tokenizer)} tokens but {cfg.init_from} only {model.config.vocab_size}"
        )
    return model


def _run_tokenizer(accelerator, cfg: TrainConfig, corpus, resume_from: Path | None):
    """The run's tokenizer: a resumed run's own (every machine holds its checkpoint); otherwise resolved once by
    the main process and sent to the others (a learnt vocabulary must be the same on every process)."""
    if resume_from is not None:
        return load_tokenizer(resume_from)
    return share_tokenizer(
        accelerator, lambda: resolve_tokenizer(cfg.tokenizer, cfg.init_from, corpus, cfg.train_split, cfg.vocab_size)
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
            enable_fake_quantization(model, cfg.weight_bits)  # before prepare: the wrappers call these forwards

        self.model, self.optimizer = accelerator.prepare(model, _optimizer(model, cfg))
        self.unwrapped = accelerator.unwrap_model(self.model)
        # save_state / load_state carry the data position along with the weights, optimizer, scaler and RNGs
        accelerator.register_for_checkpointing(DataPosition(self.data.batches, rank, self.world))
        self.tokens_per_step = cfg.batch_size * self.ctx_len * cfg.grad_accum * self.world
        self.total_steps = _total_steps(cfg, self.tokens_per_step)
        self.decay_steps = cfg.lr_decay_steps or self.total_steps
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.threshold_target = self.unwrapped.config.lif_threshold
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
        self.threshold_target = state["lif_threshold_target"]
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
            self.unwrapped.config.lif_threshold = lif_threshold(
                self.step, cfg.threshold_start, self.threshold_target, cfg.threshold_anneal_steps
            )
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

    def _micro_step(self, block: np.ndarray, sync: bool, window: _Window) -> None:
        """Forward and backward of one micro-batch; gradients are all-reduced only when ``sync``."""
        accelerator, cfg = self.accelerator, self.cfg
        ids = torch.from_numpy(block.astype(np.int64)).to(accelerator.device)  # full blocks: no padding
        with nullcontext() if sync else accelerator.no_sync(self.model), accelerator.autocast():
            out = self.model(ids[:, :-1], shift_labels=ids[:, 1:], output_spike_stats=True)
            loss = out.loss
            objective = loss + l2wrap_penalty(out.logits) if cfg.l2wrap else loss
        accelerator.backward(objective / cfg.grad_accum)
        window.loss_sum += loss.detach() / cfg.grad_accum
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
            "lif_threshold": self.unwrapped.config.lif_threshold,
            "wall_time_s": self.wall_time(),
        }
        progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                             fire=f"{record['firing_rate']:.3f}")  # fmt: skip
        if self.main:
            self.metrics.write(record)

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
            "lif_threshold_target": self.threshold_target,
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
            self.unwrapped.config.lif_threshold = self.threshold_target
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
        self.spikes = SpikeTotals(model, device)
        self.steps = 0
        self.started = time.perf_counter()


def train(cfg: TrainConfig, command: str | None = None) -> TrainSummary:
    """Run training as ``cfg`` says; returns what it did. Every process of an ``accelerate launch`` calls this."""
    return Trainer(cfg, command).run()
