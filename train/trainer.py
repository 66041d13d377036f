"""The training loop on ``accelerate``: one code path for a CPU, a GPU, or many processes (``accelerate launch``).

Per optimizer step: the learning rate and LIF threshold are set from their schedules, ``grad_accum``
micro-batches are run (gradients synchronised across processes only on the last), the gradient norm is clipped
and the optimizer steps. The loss and spike counts stay on the device between log steps, so the loop only waits
for the device when it logs.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.errors import ConfigError, TrainingError
from spikegpt.tokenizer import load_tokenizer

from .checkpointing import (
    export_model,
    load_optimizer_state,
    load_rank_state,
    load_trainer_state,
    resolve_resume,
    save_checkpoint,
)
from .config import ACCELERATE_PRECISION, TrainConfig
from .data import PAD, DataSource, load_corpus, training_data
from .evaluate import EvalResult, SpikeTotals, evaluate, make_eval_set
from .metrics import MetricsLog
from .model_card import model_card
from .schedule import learning_rate, lif_threshold
from .vocabulary import resolve_tokenizer

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARED_TOKENIZER = ".tmp-tokenizer"
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


def _model_source(cfg: TrainConfig, resume_from: Path | None) -> str | None:
    return str(resume_from) if resume_from is not None else cfg.init_from


def build_model(cfg: TrainConfig, tokenizer, source: str | None) -> SpikeGPTForCausalLM:
    """A fresh model sized for ``tokenizer``, or the one at ``source`` with ``cfg.model`` overriding its config."""
    try:
        if source is None:
            config = SpikeGPTConfig(
                vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **cfg.fresh_model_fields()
            )
            return SpikeGPTForCausalLM(config)
        model = SpikeGPTForCausalLM.from_pretrained(source, dtype=torch.float32, **cfg.model)
    except TypeError as e:
        raise ConfigError(f"invalid model option: {e}") from e
    if len(tokenizer) > model.config.vocab_size:
        raise TrainingError(f"the tokenizer has {len(tokenizer)} tokens but {source} only {model.config.vocab_size}")
    return model


def _shared_tokenizer(accelerator, cfg: TrainConfig, corpus, resume_from: Path | None, output_dir: Path):
    """The run's tokenizer: a resumed run's own; otherwise resolved once by the main process and read back by the
    others (a learnt vocabulary must be the same on every process)."""
    if resume_from is not None:
        return load_tokenizer(resume_from)
    shared = output_dir / SHARED_TOKENIZER
    if accelerator.is_main_process:
        tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.init_from, corpus, cfg.train_split, cfg.vocab_size)
        tokenizer.save_pretrained(shared)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        tokenizer = load_tokenizer(shared)
    return tokenizer


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


def _rank_state(batches) -> dict:
    state = {"torch_rng": torch.get_rng_state(), "data": batches.state_dict()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rank_state(state: dict, batches) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    batches.load_state_dict(state["data"])


def _eval_record(step: int, tokens: int, result: EvalResult) -> dict:
    return {"step": step, "tokens": tokens, **{f"val_{k}": v for k, v in result.to_dict().items() if v is not None}}


def train(cfg: TrainConfig, command: str | None = None) -> TrainSummary:
    """Run training as ``cfg`` says; returns what it did. Every process of an ``accelerate launch`` calls this."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg.run_length_given()
    # accelerate only forms a multi-process CPU group (gloo) when told it runs on the CPU
    cpu = cfg.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=ACCELERATE_PRECISION[cfg.precision], cpu=cpu)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    output_dir = Path(cfg.output_dir)
    resume_from = resolve_resume(cfg.resume, output_dir) if cfg.resume else None
    source = _model_source(cfg, resume_from)
    logger.info("process %d of %d on %s (%s)", rank, world, accelerator.device, accelerator.distributed_type)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)  # the same initial weights on every process

    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        data_source = DataSource(cfg.dataset or "", cfg.dataset_config, cfg.text_field, cfg.cache_dir, cfg.streaming)
        if not cfg.dataset:
            raise TrainingError("say what to train on: --dataset (a Hub name or a local file, directory or glob)")
        corpus = load_corpus(data_source)
    tokenizer = _shared_tokenizer(accelerator, cfg, corpus, resume_from, output_dir)
    model = build_model(cfg, tokenizer, source)
    ctx_len = model.config.ctx_len
    with accelerator.main_process_first():
        data = training_data(corpus, tokenizer, cfg, ctx_len, rank, world)
    eval_set = make_eval_set(data.validation, tokenizer, cfg.eval_max_blocks) if data.validation is not None else None
    n_params = sum(p.numel() for p in model.parameters())

    optimizer = _optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    device = accelerator.device

    tokens_per_step = cfg.batch_size * ctx_len * cfg.grad_accum * world
    total_steps = _total_steps(cfg, tokens_per_step)
    decay_steps = cfg.lr_decay_steps or total_steps
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    threshold_target = unwrapped.config.lif_threshold
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        step, tokens_seen, elapsed_before = state["step"], state["tokens"], state["wall_time_s"]
        threshold_target = state["lif_threshold_target"]
        if state["world_size"] != world:
            logger.warning(
                "resuming a %d-process run with %d processes: data order changes", state["world_size"], world
            )
        optimizer.load_state_dict(load_optimizer_state(resume_from))
        _restore_rank_state(load_rank_state(resume_from, rank), data.batches)
        logger.info("resumed from %s at step %d", resume_from, step)
    else:
        set_seed(cfg.seed + 1 + rank)  # dropout differs across processes

    if main:
        logger.info(
            "model: %.2fM parameters, %d layers x %d, ctx %d, vocab %d, spiking %s; %d processes on %s; "
            "%d tokens per step, %d steps",
            n_params / 1e6, unwrapped.config.n_layer, unwrapped.config.n_embd, ctx_len, unwrapped.config.vocab_size,
            unwrapped.config.spiking, world, device, tokens_per_step, total_steps,
        )  # fmt: skip
    metrics = MetricsLog(output_dir, resume_step=step if resume_from is not None else None) if main else None

    def checkpoint(evaluation: EvalResult | None) -> None:
        trainer_state = {
            "step": step,
            "tokens": tokens_seen,
            "wall_time_s": elapsed_before + time.perf_counter() - started,
            "world_size": world,
            "lif_threshold_target": threshold_target,
            "config": cfg.to_dict(),
            "command": command,
            "validation": evaluation.to_dict() if evaluation is not None else None,
        }
        save_checkpoint(
            accelerator,
            model,
            tokenizer,
            optimizer,
            trainer_state,
            _rank_state(data.batches),
            output_dir,
            cfg.keep_last,
        )

    def run_eval() -> EvalResult | None:
        if eval_set is None:
            return None
        result = evaluate(unwrapped, eval_set, cfg.batch_size, accelerator=accelerator)
        if main:
            metrics.write(_eval_record(step, tokens_seen, result), prefix="eval")
            logger.info(
                "step %d: validation loss %.4f, %.4f bits/byte, firing rate %.4f",
                step, result.loss, result.bits_per_byte, result.firing_rate,
            )  # fmt: skip
        return result

    started = time.perf_counter()
    batches = iter(data.batches)
    loss_sum = torch.zeros((), device=device)
    spikes = SpikeTotals(unwrapped.model.sites, unwrapped.config.n_embd, device)
    window_start, window_steps = time.perf_counter(), 0
    evaluation = None
    progress = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not main, mininterval=2.0)
    model.train()
    while step < total_steps:
        lr = learning_rate(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        unwrapped.config.lif_threshold = lif_threshold(
            step, cfg.threshold_start, threshold_target, cfg.threshold_anneal_steps
        )
        for micro in range(cfg.grad_accum):
            ids = torch.from_numpy(next(batches).astype(np.int64)).to(device)
            inputs, targets = ids[:, :-1].clamp(min=0), ids[:, 1:]  # a PAD input's own target is PAD: ignored
            last = micro == cfg.grad_accum - 1
            with nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
                out = model(inputs, output_spike_stats=True)
                loss = F.cross_entropy(
                    out.logits.reshape(-1, out.logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD
                )
                objective = loss + l2wrap_penalty(out.logits) if cfg.l2wrap else loss
            accelerator.backward(objective / cfg.grad_accum)
            loss_sum += loss.detach() / cfg.grad_accum
            spikes.add(out.spike_stats)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1
        progress.update(1)

        if step % cfg.log_interval == 0 or step == total_steps:
            mean_loss = float(accelerator.reduce(loss_sum, reduction="mean")) / window_steps
            spikes.reduce(accelerator)
            seconds = time.perf_counter() - window_start
            record = {
                "step": step,
                "tokens": tokens_seen,
                "loss": mean_loss,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": window_steps * tokens_per_step / seconds,
                "firing_rate": float(spikes.stats().firing_rate()),
                "lif_threshold": unwrapped.config.lif_threshold,
                "wall_time_s": elapsed_before + time.perf_counter() - started,
            }
            if not math.isfinite(mean_loss):
                raise TrainingError(f"the loss became {mean_loss} at step {step}; lower --lr or raise --warmup-steps")
            progress.set_postfix(
                loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                fire=f"{record['firing_rate']:.3f}",
            )  # fmt: skip
            if main:
                metrics.write(record)
            loss_sum.zero_()
            spikes = SpikeTotals(unwrapped.model.sites, unwrapped.config.n_embd, device)
            window_start, window_steps = time.perf_counter(), 0
        if step == total_steps or (cfg.eval_interval and step % cfg.eval_interval == 0):
            evaluation = run_eval()
        if step == total_steps or (cfg.save_interval and step % cfg.save_interval == 0):
            checkpoint(evaluation)
    progress.close()
    wall_time = elapsed_before + time.perf_counter() - started

    if main:
        unwrapped.config.lif_threshold = threshold_target
        card = model_card(cfg, unwrapped.config, step, tokens_seen, wall_time, evaluation, command)
        export_model(unwrapped, tokenizer, output_dir, card, dtype=EXPORT_DTYPES[cfg.export_dtype])
        shutil.rmtree(output_dir / SHARED_TOKENIZER, ignore_errors=True)
        metrics.close()
        logger.info("trained %d steps (%d tokens) in %.0f s; model in %s", step, tokens_seen, wall_time, output_dir)
        if cfg.push_to_hub:
            from .hub import push_model

            push_model(output_dir, cfg.hub_id, private=cfg.hub_private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainSummary(step, tokens_seen, wall_time, output_dir, evaluation)
