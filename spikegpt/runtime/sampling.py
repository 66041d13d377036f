"""Sampling parameters and the batched sampler: logits processing, then a seeded draw, for many sequences at once.

``BatchSampler`` holds one row per engine slot. Every call processes all rows with the same tensor shapes,
whatever is running, and each row draws its random number from its own seeded generator, so a sequence's tokens
depend only on its own logits, parameters and seed, never on what else shares the batch. Optional steps (top-k,
top-p, min-p, penalties) are skipped when no running row asks for them; each is an exact identity on a row that
does not ask for it, so skipping it changes no row's result.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_TOKEN_IDS = 64
MAX_N = 16  # choices per prompt

# A temperature or top_p below this is greedy decoding. The sampler's per-row values are float32, in which a
# temperature near 1e-38 becomes 0 (and divides) and a top_p near 1e-46 becomes 0 (and drops every token); well
# before that, a temperature this small already gives the most likely token every time, and a top_p this small
# keeps only it (the most likely token of a vocabulary under 100,000 tokens has a probability above 1e-5). vLLM
# draws the same line for temperature (1e-5, ``_SAMPLING_EPS``).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Bound:
    """The closed range ``[low, high]`` of a parameter (``low`` excluded when ``low_open``)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high  # False for NaN

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def constraints(self) -> dict:
        """As pydantic's Field arguments."""
        return {"gt" if self.low_open else "ge": self.low, "le": self.high}


# THE table of limits: the server's request models are built from it, SamplingParams checks the same ranges
# (for callers of the library), and the sampler relies on them (every value fits its tensors).
LIMITS: dict[str, Bound] = {
    "max_tokens": Bound(0, INT64_MAX),  # 0: score the prompt only, generate nothing (legacy completions)
    "chat_max_tokens": Bound(1, INT64_MAX),  # chat's max_tokens and max_completion_tokens: a reply has a token
    "temperature": Bound(0, 2),
    "top_p": Bound(0, 1, low_open=True),
    "top_k": Bound(-1, INT64_MAX),  # 0 or -1: off; above the vocabulary: off
    "min_p": Bound(0, 1),
    "presence_penalty": Bound(-2, 2),
    "frequency_penalty": Bound(-2, 2),
    "repetition_penalty": Bound(0.01, 10),  # divides and multiplies logits: a smaller one overflows float32
    "seed": Bound(INT64_MIN, INT64_MAX),
    "logprobs": Bound(0, MAX_TOP_LOGPROBS),
    "n": Bound(1, MAX_N),
    "token_id": Bound(0, INT64_MAX),  # and below the model's vocabulary size, which the server checks
}


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a request with ``seed``: seed + choice, wrapped into int64."""
    return (seed + choice - INT64_MIN) % 2**64 + INT64_MIN


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop (the OpenAI API's parameters, with vLLM's extras).

    temperature 0 (or below ``GREEDY_BELOW``) means greedy, and so does a top_p below ``GREEDY_BELOW``. top_k 0
    (or -1) and top_p 1 and min_p 0 switch those filters off. presence and frequency penalties act on generated
    tokens (OpenAI); repetition_penalty (> 1 discourages) acts on prompt and generated tokens (Hugging Face, vLLM).
    seed None draws a random seed. logprobs None returns none; k returns the chosen token's log-probability and
    the k most likely alternatives (raw model distribution, before any processing).

    The server validates requests before building these; the check here holds library callers (``spikegpt
    generate``) to the same ``LIMITS`` and raises ``GenerationError``.
    """

    max_tokens: int = 16  # 0: score the prompt only (with prompt log-probabilities), generate nothing
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
        for name, bound in LIMITS.items():
            value = getattr(self, name, None)
            if value is not None and value not in bound:
                raise GenerationError(f"{name} must be in {bound.describe()}, got {value!r}", param=name)
        if not all(self.stop):
            raise GenerationError("stop strings must not be empty", param="stop")
        if not all(t in LIMITS["token_id"] for t in self.stop_token_ids):
            raise GenerationError(f"stop_token_ids must be in {LIMITS['token_id'].describe()}", param="stop_token_ids")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_p < GREEDY_BELOW


@dataclass
class TokenChoice:
    """A sampled token, with its log-probability and the top alternatives when asked for."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


def top_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[list, list]:
    """For rows of log-probabilities ``[N, V]``: each row's logprob of ``tokens[N]``, and its k best as
    ``(ids, values)`` lists (empty when k is 0). One host transfer per list."""
    chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    if k == 0:
        return chosen, [[] for _ in chosen]
    top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    pairs = [list(zip(i, v, strict=True)) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
    return chosen, pairs


class BatchSampler:
    """Next tokens for the rows of a ``[rows, vocab]`` logits tensor, each row with its own parameters and seed."""

    def __init__(self, rows: int, vocab_size: int, device: torch.device | str):
        self.rows = rows
        self.vocab_size = vocab_size
        self.params: list[SamplingParams | None] = [None] * rows
        self._rngs: list[random.Random | None] = [None] * rows
        column = dict(device=device, dtype=torch.float32)
        self._temperature = torch.ones(rows, 1, **column)  # 1 for greedy rows: they take the argmax instead
        self._top_k = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self._top_p = torch.ones(rows, 1, **column)
        self._min_p = torch.zeros(rows, 1, **column)
        self._presence = torch.zeros(rows, 1, **column)
        self._frequency = torch.zeros(rows, 1, **column)
        self._repetition = torch.ones(rows, 1, **column)
        self._greedy = torch.zeros(rows, dtype=torch.bool, device=device)
        self._output_counts = torch.zeros(rows, vocab_size, **column)
        self._seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
        self._uniform = torch.zeros(rows, 1, **column)

    def start(self, row: int, params: SamplingParams, prompt_ids: list[int]) -> None:
        """Give ``row`` to a new sequence: its parameters, a fresh generator and penalty history."""
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        self.params[row] = params
        self._rngs[row] = random.Random(seed)
        # a greedy row takes the argmax of its penalised logits, which temperature and the filters never change:
        # it gets the neutral values (a tiny temperature or top_p would become 0 in float32)
        greedy = params.greedy
        self._temperature[row] = 1.0 if greedy else params.temperature
        self._top_k[row] = 0 if greedy else min(max(params.top_k, 0), self.vocab_size)
        self._top_p[row] = 1.0 if greedy else params.top_p
        self._min_p[row] = 0.0 if greedy else params.min_p
        self._presence[row] = params.presence_penalty
        self._frequency[row] = params.frequency_penalty
        self._repetition[row] = params.repetition_penalty
        self._greedy[row] = greedy
        self._output_counts[row] = 0
        self._seen[row] = False
        if prompt_ids:
            self._seen[row, torch.tensor(prompt_ids, device=self._seen.device)] = True

    def release(self, row: int) -> None:
        self.params[row] = None
        self._rngs[row] = None

    def _process(self, logits: torch.Tensor, active: list[SamplingParams]) -> torch.Tensor:
        """Penalties, temperature and the top-k / min-p / top-p filters (filtered tokens get -inf)."""
        if any(p.repetition_penalty != 1.0 for p in active):
            penalised = torch.where(logits > 0, logits / self._repetition, logits * self._repetition)
            logits = torch.where(self._seen, penalised, logits)
        if any(p.presence_penalty or p.frequency_penalty for p in active):
            logits = logits - self._frequency * self._output_counts - self._presence * (self._output_counts > 0)
        logits = logits / self._temperature
        if any(0 < p.top_k < self.vocab_size for p in active):
            ordered = torch.sort(logits, dim=-1, descending=True).values
            kth = ordered.gather(1, (self._top_k - 1).clamp(0, self.vocab_size - 1))
            kth = torch.where(self._top_k > 0, kth, float("-inf"))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if any(p.min_p > 0 for p in active):
            probs = torch.softmax(logits, dim=-1)
            logits = logits.masked_fill(probs < self._min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
        if any(p.top_p < 1.0 for p in active):
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            # drop a token once the mass before it reaches top_p (so the token crossing top_p stays)
            drop = (probs.cumsum(dim=-1) - probs >= self._top_p) & (self._top_p < 1.0)
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
        return logits

    def draw(self, rows: list[int]) -> list[float]:
        """The next uniform number of each row's own generator (unused by greedy rows); each call advances them."""
        return [self._rngs[r].random() for r in rows]

    def sample(
        self, logits: torch.Tensor, rows: list[int], uniforms: list[float] | None = None
    ) -> tuple[torch.Tensor, list[TokenChoice]]:
        """Sample every row of ``logits`` ``[self.rows, vocab]``; returns all rows' tokens as a tensor (the next
        decoding input) and the choices of ``rows``, the running ones, in that order. ``uniforms`` (from
        ``draw(rows)``) lets a caller retry a failed call row by row with the same random numbers; a row's result
        never depends on the other rows passed."""
        active = [self.params[r] for r in rows]
        if uniforms is None:
            uniforms = self.draw(rows)
        logits = logits.float()
        processed = self._process(logits, active)
        greedy_tokens = processed.argmax(dim=-1)
        tokens = greedy_tokens
        if not all(p.greedy for p in active):
            drawing = [(r, u) for r, u, p in zip(rows, uniforms, active, strict=True) if not p.greedy]
            values = torch.tensor([u for _, u in drawing], dtype=torch.float32)
            self._uniform[torch.tensor([r for r, _ in drawing])] = values.to(self._uniform.device)[:, None]
            # inverse-CDF draw with the row's own uniform number; the target stays below the total, so a token of
            # zero probability is never chosen
            cdf = torch.softmax(processed, dim=-1).cumsum(dim=-1)
            total = cdf[:, -1:]
            target = torch.minimum(self._uniform * total, torch.nextafter(total, torch.zeros_like(total)))
            drawn = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=self.vocab_size - 1)
            tokens = torch.where(self._greedy, greedy_tokens, drawn)
        index = torch.tensor(rows, device=tokens.device)
        chosen = tokens[index]
        choices = [TokenChoice(t) for t in chosen.tolist()]
        wanted = [i for i, p in enumerate(active) if p.logprobs is not None]
        if wanted:
            k = max(active[i].logprobs for i in wanted)
            picked = index[wanted]
            # over every row, so that a row's values never depend on the batch's shape
            logprobs = torch.log_softmax(logits, dim=-1)
            values, tops = top_logprobs(logprobs[picked], tokens[picked], k)
            for i, value, top in zip(wanted, values, tops, strict=True):
                choices[i].logprob = value
                choices[i].top_logprobs = top[: active[i].logprobs]
        # the penalties' history changes last, so that a call that fails leaves every row as it was
        self._output_counts.index_put_((index, chosen), torch.ones_like(chosen, dtype=torch.float32), accumulate=True)
        self._seen[index, chosen] = True
        return tokens, choices
