"""Evaluation: loss, perplexity, bits per byte (and per character), per-site firing rates and what each projection
read (zero inputs, spikes per input) over packed blocks.

``spikegpt eval`` and the training loop both call ``evaluate``. Each block starts from a fresh state, as in
training. The model reads each block with its parallel form, or (``decode``) token by token through the decoding
step's products, as ``spikegpt generate`` and ``serve`` compute (int8 ones for a model on the 8-bit grid on a CPU,
event-driven ones as the mode says): the bits per byte of what they decode with. Bits per byte divide the summed
loss (in bits) by the UTF-8 bytes of the text the targets spell, so models with different tokenizers compare on the
same scale: every byte, those of characters outside a character vocabulary (which the model had to predict as its
unknown token) included, and how many those were is reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikegpt.modeling.stats import SpikeStats

from .data import PAD


@dataclass
class EvalSet:
    """Blocks to evaluate and the size of the text their targets spell."""

    blocks: np.ndarray
    n_tokens: int
    n_bytes: int
    n_chars: int
    character_vocabulary: bool
    unknown_tokens: int = 0  # targets that stand for a character outside the vocabulary
    unknown_bytes: int = 0  # the UTF-8 bytes of those characters (part of n_bytes)


def is_character_vocabulary(tokenizer) -> bool:
    """Every ordinary token is one character (the original's enwik8 set-up)."""
    special = set(tokenizer.all_special_ids)
    return all(len(tokenizer.decode([i])) == 1 for i in range(len(tokenizer)) if i not in special)


def make_eval_set(
    blocks: np.ndarray, tokenizer, max_blocks: int | None = None, unknown: np.ndarray | None = None
) -> EvalSet:
    """``blocks`` from ``pack``; ``unknown``: their unknown bytes, packed alike (``Tokens.packed``), for a
    vocabulary that can lack characters."""
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    kept = blocks[:, 1:] != PAD
    targets = blocks[:, 1:][kept]
    unknown_bytes = unknown[: len(blocks), 1:][kept] if unknown is not None else np.zeros_like(targets)
    is_unknown = unknown_bytes > 0
    text = tokenizer.decode(targets[~is_unknown].tolist(), skip_special_tokens=True)
    return EvalSet(
        blocks,
        n_tokens=len(targets),
        n_bytes=len(text.encode("utf-8")) + int(unknown_bytes.sum()),
        n_chars=len(text) + int(is_unknown.sum()),
        character_vocabulary=is_character_vocabulary(tokenizer),
        unknown_tokens=int(is_unknown.sum()),
        unknown_bytes=int(unknown_bytes.sum()),
    )


class SpikeTotals:
    """Spike counts summed over batches on the device (no host sync until ``stats`` is read)."""

    def __init__(self, model, device):
        layout = model.layout
        self.sites, self.projections = layout.sites, layout.product_names
        self.n_embd = layout.site_width
        self.fan_ins = [product.fan_in for product in layout.products]  # in the order of the projections
        self.counts = torch.zeros(len(self.sites), dtype=torch.long, device=device)
        self.reads = torch.zeros(len(self.projections), 2, dtype=torch.long, device=device)
        self.tokens = torch.zeros((), dtype=torch.long, device=device)

    def add(self, stats: SpikeStats) -> None:
        self.counts += stats.counts.sum(dim=0)
        self.reads += stats.reads.sum(dim=0)
        self.tokens += stats.tokens.sum()

    def reduce(self, accelerator) -> None:
        """Sum over the processes of ``accelerator``."""
        if accelerator is not None and accelerator.num_processes > 1:
            self.counts = accelerator.reduce(self.counts, reduction="sum")
            self.reads = accelerator.reduce(self.reads, reduction="sum")
            self.tokens = accelerator.reduce(self.tokens, reduction="sum")

    def stats(self) -> SpikeStats:
        return SpikeStats(
            self.counts[None], self.tokens[None], self.sites, self.n_embd, self.reads[None], self.projections
        )

    def site_rates(self) -> dict[str, float]:
        return dict(zip(self.sites, self.stats().site_rates().tolist(), strict=True))

    def input_totals(self) -> dict[str, float]:
        """Over every projection's input elements: the fraction that were zero and the spikes read per element."""
        widths = torch.tensor(self.fan_ins, dtype=torch.long)
        elements = max(int((widths * self.tokens.cpu()).sum()), 1)
        nonzero, spikes = self.reads.sum(dim=0).tolist()
        return {"zero_fraction": 1 - nonzero / elements, "spikes_per_input": spikes / elements}

    def input_stats(self) -> dict[str, dict[str, float]]:
        """Per projection: the fraction of its input elements that were zero and the spikes it read per input
        element (the summed counts; 0 for real-valued inputs, which carry no spikes)."""
        reads, tokens = self.reads.tolist(), int(self.tokens)
        out = {}
        for name, fan_in, (nonzero, spikes) in zip(self.projections, self.fan_ins, reads, strict=True):
            elements = max(tokens * fan_in, 1)
            out[name] = {"zero_fraction": 1 - nonzero / elements, "spikes_per_input": spikes / elements}
        return out


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per target token, in nats
    perplexity: float
    bits_per_token: float
    bits_per_byte: float
    bits_per_character: float | None  # only for character vocabularies
    tokens: int
    bytes: int  # every byte of the text the targets spell
    unknown_characters: int  # of those, characters outside the vocabulary (each predicted as the unknown token)
    unknown_bytes: int  # and their bytes
    firing_rate: float  # fraction of all values at all spiking sites that were spikes
    site_rates: dict[str, float]  # per site: the embedding, then each block's att.lif and ffn.lif
    inputs: dict[str, dict[str, float]]  # per projection: zero_fraction and spikes_per_input of what it read
    input_zero_fraction: float  # over all projections' input elements
    spikes_per_input: float  # summed spike magnitudes per input element, over all projections (0: real inputs)

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(blocks: np.ndarray, batch_size: int):
    """Batches of full blocks, then any block shorter than the rest (the padded tail) alone, cut to its length."""
    lengths = (blocks != PAD).sum(axis=1)
    full = np.flatnonzero(lengths == blocks.shape[1])
    for start in range(0, len(full), batch_size):
        yield blocks[full[start : start + batch_size]]
    for i in np.flatnonzero(lengths < blocks.shape[1]):
        yield blocks[i : i + 1, : lengths[i]]


def evaluate(
    model,
    eval_set: EvalSet,
    batch_size: int,
    accelerator=None,
    device=None,
    progress: bool = True,
    decode: str | None = None,
):
    """Evaluate ``model`` (unwrapped) on ``eval_set``; with an ``accelerator``, the blocks are shared among its
    processes and the sums reduced, so every process returns the same result. ``decode``: read token by token with
    the decoding step's products of that mode (``spikegpt.runtime.products.step_products``), not the parallel
    form."""
    return evaluate_with_stats(model, eval_set, batch_size, accelerator, device, progress, decode)[0]


def _recurrent_loss(model, ids: torch.Tensor, n_targets: int, decode: str, spikes: SpikeTotals) -> torch.Tensor:
    """The mean loss's share of ``ids`` ``[B, T]`` read one token at a time through the decoding step's products,
    and their spike statistics."""
    from spikegpt.runtime.products import step_products

    state, loss = model.fresh_state(ids.shape[0]), torch.zeros((), dtype=torch.float64, device=ids.device)
    with step_products(model, decode, ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            out = model(ids[:, t : t + 1], state=state, output_spike_stats=True)
            state = out.state
            loss += F.cross_entropy(out.logits[:, -1].float(), ids[:, t + 1], reduction="sum").double()
            spikes.add(out.spike_stats)
    return loss / n_targets


@torch.no_grad()
def evaluate_with_stats(
    model,
    eval_set: EvalSet,
    batch_size: int,
    accelerator=None,
    device=None,
    progress: bool = True,
    decode: str | None = None,
) -> tuple[EvalResult, SpikeStats]:
    """``evaluate``, and the spike statistics of the whole evaluation (one row; every position's logits computed),
    ready for an energy report."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = accelerator.device if accelerator is not None else (device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # the mean loss, summed batch by batch
    n_targets = max(eval_set.n_tokens, 1)
    spikes = SpikeTotals(model, device)
    mine = eval_set.blocks[rank::world]
    batches = list(_batches(mine, batch_size))
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
    with autocast:
        for batch in tqdm(batches, desc="evaluating", leave=False, disable=None if progress and rank == 0 else True):
            ids = torch.from_numpy(batch.astype(np.int64)).to(device)
            if decode is not None:
                loss_sum += _recurrent_loss(model, ids, n_targets, decode, spikes)
                continue
            # the model's loss over the whole set's target count: this batch's share of the mean
            out = model(ids[:, :-1], shift_labels=ids[:, 1:], num_items_in_batch=n_targets, output_spike_stats=True)
            loss_sum += out.loss
            spikes.add(out.spike_stats)
    if accelerator is not None and world > 1:
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    spikes.reduce(accelerator)
    model.train(was_training)
    nats = float(loss_sum)
    bits = nats * n_targets / math.log(2)
    totals = spikes.input_totals()
    result = EvalResult(
        loss=nats,
        perplexity=math.exp(min(nats, 700.0)),
        bits_per_token=nats / math.log(2),
        bits_per_byte=bits / max(eval_set.n_bytes, 1),
        bits_per_character=bits / max(eval_set.n_chars, 1) if eval_set.character_vocabulary else None,
        tokens=eval_set.n_tokens,
        bytes=eval_set.n_bytes,
        unknown_characters=eval_set.unknown_tokens,
        unknown_bytes=eval_set.unknown_bytes,
        firing_rate=float(spikes.stats().firing_rate()),
        site_rates=spikes.site_rates(),
        inputs=spikes.input_stats(),
        input_zero_fraction=totals["zero_fraction"],
        spikes_per_input=totals["spikes_per_input"],
    )
    stats = spikes.stats()
    stats.head_tokens = stats.tokens.clone()
    return result, stats
