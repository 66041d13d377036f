"""A SpikeGPT training step runs through the kernel dispatch on a CPU, and the Triton kernels (interpreted)
give the model the same loss and gradients as the torch references."""

from __future__ import annotations

import copy

import torch
from conftest import lively_weights_, tiny_config
from kernel_numerics import rel_err
from triton_interpreter import interpreted_triton  # noqa: F401  (autouse: interpreter, NaN-filled outputs)

from spikegpt import SpikeGPTForCausalLM
from spikegpt.kernels import reload_kernel_backend


def training_step(model, ids):
    model.zero_grad()
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_training_step_is_the_same_through_triton_and_torch(monkeypatch):
    """A fixed seed (not the per-test random one): over two layers, a WKV difference of one rounding could
    move a membrane across the threshold and flip a spike, which this comparison would report as a failure."""
    torch.manual_seed(7)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(n_layer=2, n_embd=32)), seed=7).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
    loss, gradients = training_step(model, ids)
    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    reload_kernel_backend()
    loss_triton, gradients_triton = training_step(model, ids)
    assert torch.isfinite(loss) and rel_err(loss_triton, loss) <= 1e-5
    for name, grad in gradients.items():
        assert rel_err(gradients_triton[name], grad) <= 1e-4, name
    assert gradients["model.blocks.1.att.time_decay"].abs().sum() > 0


def test_cpu_training_steps_reduce_the_loss(monkeypatch):
    monkeypatch.delenv("SPIKEGPT_KERNELS", raising=False)
    torch.manual_seed(3)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(n_layer=2, n_embd=32)), seed=3).train()
    before = copy.deepcopy(model.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (4, 24))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[name], p) for name, p in model.state_dict().items() if "time_" in name)
