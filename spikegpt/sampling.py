"""Sampling parameters and the per-sequence sampler: logits processing, then a seeded draw.

Each sequence owns its sampler and its ``torch.Generator``, and rows are processed one at a time, so a
sequence's tokens depend only on its own logits and seed, never on what else shares the batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from .errors import GenerationError

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop (the OpenAI API's parameters, with vLLM's extras).

    temperature 0 means greedy. top_k 0 and top_p 1 and min_p 0 switch those filters off. presence and frequency
    penalties act on generated tokens (OpenAI); repetition_penalty (> 1 discourages) acts on prompt and generated
    tokens (Hugging Face, vLLM). seed None draws a random seed. logprobs None returns none; k returns the chosen
    token's log-probability and the k most likely alternatives (raw model distribution, before any processing).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (math.isfinite(self.temperature) and 0 <= self.temperature <= 100, "temperature", "must be in [0, 100]"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be 0 (off) or positive"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (0 < self.repetition_penalty <= 10, "repetition_penalty", "must be in (0, 10]"),
            (len(self.stop) <= MAX_STOP_STRINGS, "stop", f"takes at most {MAX_STOP_STRINGS} strings"),
            (all(self.stop), "stop", "strings must not be empty"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                "logprobs",
                f"must be between 0 and {MAX_TOP_LOGPROBS}",
            ),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise GenerationError(f"{name} {rule}, got {getattr(self, name)!r}", param=name)


@dataclass
class TokenChoice:
    """A sampled token, with its log-probability and the top alternatives when asked for."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """Picks the next tokens of one sequence."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int], device: torch.device | str):
        self.params = params
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.output_counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if prompt_ids:
            self.seen[torch.tensor(prompt_ids, device=device)] = True

    def _process(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.repetition_penalty != 1.0:
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(self.seen, penalised, logits)
        if p.presence_penalty or p.frequency_penalty:
            logits = logits - p.frequency_penalty * self.output_counts - p.presence_penalty * (self.output_counts > 0)
        if p.temperature == 0:
            return logits
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.min_p > 0:
            probs = torch.softmax(logits, dim=-1)
            logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= p.top_p  # keep the token crossing p
            logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
        return logits

    def sample(self, logits: torch.Tensor) -> TokenChoice:
        """Choose the next token from one row of logits ``[vocab]``."""
        logits = logits.float()
        processed = self._process(logits)
        if self.params.temperature == 0:
            token = int(torch.argmax(processed))
        else:
            probs = torch.softmax(processed, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.output_counts[token] += 1
        self.seen[token] = True
        choice = TokenChoice(token)
        if self.params.logprobs is not None:
            logprobs = torch.log_softmax(logits, dim=-1)
            choice.logprob = float(logprobs[token])
            if self.params.logprobs:
                top = torch.topk(logprobs, min(self.params.logprobs, logprobs.shape[-1]))
                choice.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return choice
