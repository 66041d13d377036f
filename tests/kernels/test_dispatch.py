"""``spikegpt.kernels.wkv`` / ``lif`` choose the backend from the tensor's device and ``SPIKEGPT_KERNELS``, and
say clearly why Triton cannot run where it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from kernel_numerics import wkv_inputs
from triton_interpreter import interpreted_triton  # noqa: F401  (autouse: interpreter, NaN-filled outputs)

from spikegpt.kernels import (
    KernelArgumentError,
    KernelUnavailableError,
    LIFParams,
    kernel_backend,
    lif,
    reload_kernel_backend,
    wkv,
)
from spikegpt.kernels.lif_torch import lif_torch
from spikegpt.kernels.lif_triton import lif_triton
from spikegpt.kernels.wkv_torch import wkv_torch
from spikegpt.kernels.wkv_triton import wkv_triton


def test_cpu_tensors_use_the_torch_reference(monkeypatch):
    monkeypatch.delenv("SPIKEGPT_KERNELS", raising=False)
    assert kernel_backend(torch.zeros(1)) == "torch"
    monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
    reload_kernel_backend()
    assert kernel_backend(torch.zeros(1)) == "torch"


def test_the_backend_choice_is_read_once_and_cached(monkeypatch):
    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    assert kernel_backend(torch.zeros(1)) == "triton"  # (the interpreter is on)
    monkeypatch.setenv("SPIKEGPT_KERNELS", "torch")
    assert kernel_backend(torch.zeros(1)) == "triton"  # not read again per call
    reload_kernel_backend()
    assert kernel_backend(torch.zeros(1)) == "torch"


class _CudaTensor:
    """Stands in for a CUDA tensor (no GPU here): the dispatch only asks ``is_cuda``."""

    is_cuda = True


def test_one_token_steps_take_the_reference_on_cuda_and_longer_runs_triton(monkeypatch):
    monkeypatch.delenv("SPIKEGPT_KERNELS", raising=False)
    assert kernel_backend(_CudaTensor(), steps=1) == "torch"
    assert kernel_backend(_CudaTensor(), steps=7) == "triton"
    assert kernel_backend(_CudaTensor()) == "triton"  # sparse products, whatever their batch
    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    reload_kernel_backend()
    assert kernel_backend(_CudaTensor(), steps=1) == "triton"  # forced: every call


@pytest.mark.parametrize("backend, forms", [("torch", (wkv_torch, lif_torch)), ("triton", (wkv_triton, lif_triton))])
def test_forced_backend_runs_that_implementation(backend, forms, monkeypatch, seed):
    monkeypatch.setenv("SPIKEGPT_KERNELS", backend)
    wkv_form, lif_form = forms
    w, u, k, v, state = wkv_inputs(2, 5, 20, seed=seed, with_state=True)
    y, new_state = wkv(w, u, k, v, state)
    want_y, want_state = wkv_form(w, u, k, v, state)
    assert torch.equal(y, want_y) and all(torch.equal(a, b) for a, b in zip(new_state, want_state, strict=True))
    spikes, v_last, counts = lif(k * 3, None, LIFParams(2.0, 1.0, "hard", "atan", 2.0), return_counts=True)
    want_spikes, want_v = lif_form(k * 3)[:2]
    assert torch.equal(spikes, want_spikes) and torch.equal(v_last, want_v)
    assert torch.equal(counts, want_spikes.sum(dim=1))
    assert len(lif(k * 3)) == 2


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("SPIKEGPT_KERNELS", "cuda")
    with pytest.raises(KernelUnavailableError, match="SPIKEGPT_KERNELS must be one of auto, torch, triton"):
        kernel_backend(torch.zeros(1))


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("SPIKEGPT_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelUnavailableError, match=r"needs CUDA tensors .* TRITON_INTERPRET=1"):
        wkv(*wkv_inputs(1, 2, 4, seed=0)[:4])


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_forced_triton_without_triton_installed_says_so():
    """A real process in which ``import triton`` fails (``sys.modules["triton"] = None`` blocks it)."""
    result = run_python(
        """
        import sys
        sys.modules["triton"] = None
        import torch
        from spikegpt.kernels import KernelUnavailableError, lif
        try:
            lif(torch.zeros(1, 2, 3))
        except KernelUnavailableError as e:
            print("refused:", e)
        """,
        SPIKEGPT_KERNELS="triton",
    )
    assert result.returncode == 0, result.stderr
    assert "refused: SPIKEGPT_KERNELS=triton, but the triton package cannot be imported" in result.stdout


def test_triton_kernels_called_directly_on_cpu_without_the_interpreter_say_so(monkeypatch, seed):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelUnavailableError, match=r"need CUDA tensors \(got cpu\).*TRITON_INTERPRET=1"):
        lif_triton(torch.zeros(1, 2, 3))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # set after the first attempt: the kernels follow it
    w, u, k, v, _ = wkv_inputs(1, 3, 4, seed=seed)
    assert torch.allclose(wkv_triton(w, u, k, v)[0], wkv_torch(w, u, k, v)[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_typed_errors_naming_the_problem():
    w, u, k, v, _ = wkv_inputs(2, 3, 4, seed=0)
    with pytest.raises(KernelArgumentError, match=r"w and u of shape \[C\] = \[4\]"):
        wkv(w[:3], u, k, v)
    with pytest.raises(KernelArgumentError, match="one floating dtype"):
        wkv(w, u, k, v.double())
    with pytest.raises(KernelArgumentError, match="three"):
        wkv(w, u, k, v, (torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(KernelArgumentError, match="unknown reset 'none'; choose one of hard, soft"):
        lif(k, None, LIFParams(reset="none"))
    with pytest.raises(KernelArgumentError, match="tau > 1"):
        lif(k, None, LIFParams(tau=1.0))
    with pytest.raises(KernelArgumentError, match="one LIFParams"):
        lif(k, None, 2.0)
    with pytest.raises(KernelArgumentError, match="the Triton kernels take fp64, fp32, fp16 or bf16"):
        wkv_triton(w, u, k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn))
    with pytest.raises(KernelArgumentError, match="block_c a power of two"):
        lif_triton(k, block_c=24)
    assert issubclass(KernelArgumentError, ValueError)
