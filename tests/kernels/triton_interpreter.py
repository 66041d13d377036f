"""Run the Triton kernels on CPU tensors through Triton's interpreter, with every output pre-filled with NaN.

Test modules import the fixture below (``from triton_interpreter import interpreted_triton``); it is not in a
``conftest.py`` because a second module of that name would take the place of ``tests/conftest.py`` for the
``from conftest import ...`` of every test directory collected after this one. The interpreter runs one program
at a time in numpy: shapes stay tiny.
"""

from __future__ import annotations

import pytest
import torch

from spikegpt.kernels import triton_support


@pytest.fixture(autouse=True)
def interpreted_triton(monkeypatch):
    """``TRITON_INTERPRET=1`` for the test (the kernels are jitted at launch, so this is in time), and every
    buffer a Triton kernel writes (outputs, gradients, checkpoints, scratch) starts as NaN, so an element a
    kernel forgets to write, or a scratch row it reads before writing, shows up as NaN in the results."""

    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_support, "empty", nan_filled)
