"""A tiny model with random product weights, for the quantization tests."""

from __future__ import annotations

import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.quant.grids import quantized_linears


def tiny_model(seed: int = 0) -> SpikeGPTForCausalLM:
    torch.manual_seed(seed)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=40, n_layer=2, n_embd=32, ctx_len=16, dropout=0.0))
    with torch.no_grad():
        for _, linear in quantized_linears(model):
            linear.weight.normal_(0, 0.3)
    return model.eval()
