"""What training minimises: the language-model loss and the terms the training options add to it, defined here
once.

    objective = (1 − w)·CE + w·T²·KL(teacher_T ‖ model_T)      with --teacher (w: distill_weight, T: temperature)
              + λ(step)·max(spikes per input − target, 0)       with --spike-penalty λ (and --spike-target)
              + ½·1e-4·mean(max logit²)                         with --l2wrap

The cross-entropy is the model's own loss (``SpikeGPTForCausalLM.forward``); the log reports it alone, so runs with
and without the extra terms compare on the same scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikegpt.modeling.neuron import InputSpikes

from .schedule import weight_warmup

L2WRAP_FACTOR = 1e-4  # the original SpikeGPT's L2Wrap (src/model.py)


def l2wrap_penalty(logits: torch.Tensor) -> torch.Tensor:
    """The original's L2Wrap written as a loss term: ½·1e-4·mean(max logit²) has gradient 1e-4·max/(B·T) at each
    position's largest logit, the gradient L2Wrap injects, which keeps logits from drifting upwards."""
    return 0.5 * L2WRAP_FACTOR * logits.float().amax(dim=-1).square().mean()


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(p ‖ q) with p = softmax(teacher_logits / T) and q = softmax(logits / T), summed over the vocabulary and
    averaged over positions. The T² keeps its gradient on the scale of the cross-entropy's whatever T (Hinton et
    al., "Distilling the knowledge in a neural network", 2015)."""
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    return temperature**2 * kl


def spike_penalty(rate: torch.Tensor, weight: float, target: float | None) -> torch.Tensor:
    """``weight`` × the spikes per input element ``rate`` above ``target`` (all of it without a target)."""
    excess = rate if target is None else torch.clamp(rate - target, min=0.0)
    return weight * excess


class InputSpikeRate:
    """Spikes per input element of a training forward pass, differentiable: the summed magnitudes of every encoder's
    output (spike counts or binary spikes, through their straight-through or surrogate gradients) over the number of
    elements encoded. Read from forward hooks on the model's encoders, so the model itself stays stateless; a
    module in eval mode (evaluation) is not counted."""

    def __init__(self, model: torch.nn.Module):
        self.encoders = [m for m in model.modules() if isinstance(m, InputSpikes)]
        self.hooks = [encoder.register_forward_hook(self._record) for encoder in self.encoders]
        self.reset()

    def _record(self, module, args, out) -> None:
        if module.training:
            for spikes in out[0]:
                self.magnitude = self.magnitude + spikes.abs().sum(dtype=torch.float32)
                self.elements += spikes.numel()

    def reset(self) -> None:
        self.magnitude, self.elements = 0.0, 0

    def rate(self) -> torch.Tensor:
        """Spikes per input element since ``reset``; then resets."""
        rate = self.magnitude / max(self.elements, 1)
        self.reset()
        return rate

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


class Objective:
    """The objective of one micro-batch at a step, from the run's options (see the module's docstring)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(
        self,
        step: int,
        loss: torch.Tensor,
        logits: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        spike_rate: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the objective, its extra terms detached for the log: ``distill`` (T²·KL); the spikes per input element
        are logged from the forward's statistics, the same number)."""
        cfg, terms = self.cfg, {}
        objective = loss
        if teacher_logits is not None:
            distill = distillation_loss(logits, teacher_logits, cfg.distill_temperature)
            objective = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distill
            terms["distill"] = distill.detach()
        if spike_rate is not None:
            weight = weight_warmup(step, cfg.spike_penalty, cfg.spike_penalty_warmup_steps)
            objective = objective + spike_penalty(spike_rate, weight, cfg.spike_target)
        if cfg.l2wrap:
            objective = objective + l2wrap_penalty(logits)
        return objective, terms
