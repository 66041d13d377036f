"""Spike statistics of a model reading a text: the parallel form over chunks of tokens, carrying the state."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..modeling.model import SpikeGPTForCausalLM
from ..modeling.stats import SpikeStats


@torch.inference_mode()
def read_spike_stats(
    model: SpikeGPTForCausalLM, ids: list[int], chunk_tokens: int = 512, progress: bool = True
) -> SpikeStats:
    """The spikes of reading ``ids`` as one sequence. The recurrent state carries from chunk to chunk, so the
    statistics equal those of a single pass whatever ``chunk_tokens`` is; ``progress`` shows a bar on a terminal."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not ids:
        raise ValueError("there are no tokens to read")
    device = model.head.weight.device
    tokens = torch.tensor([ids], dtype=torch.long, device=device)
    state, stats = None, None
    with tqdm(total=len(ids), unit="tok", desc="reading", disable=None if progress else True) as bar:
        for start in range(0, len(ids), chunk_tokens):
            chunk = tokens[:, start : start + chunk_tokens]
            out = model(chunk, state=state, use_cache=True, output_spike_stats=True, logits_to_keep=1)
            state = out.state
            stats = out.spike_stats if stats is None else stats + out.spike_stats
            bar.update(chunk.shape[1])
    return stats
