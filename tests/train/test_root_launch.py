"""Every entry point runs from the repository root, where the checkout's top-level ``kernels/`` folder (installed as
``spikegpt.kernels``) would hide Hugging Face's ``kernels`` package, which transformers imports. Each test runs a
real process with the root as its working directory (``python -m`` puts it first on ``sys.path``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = ROOT / "train" / "configs" / "accelerate"


def run_from_root(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_name_kernels_is_hugging_faces_package_and_ours_stays_spikegpt_kernels():
    done = run_from_root(
        sys.executable, "-c",
        "import transformers.modeling_utils, kernels, spikegpt.kernels as ours; from kernels import Mode; "
        "print(kernels.__file__); print(ours.__file__); print(callable(ours.sparse_linear))",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs, ours, callable_ = done.stdout.split()
    assert not Path(theirs).is_relative_to(ROOT), theirs  # Hugging Face's installed package, not the checkout's folder
    assert ours == str(ROOT / "kernels" / "__init__.py") and callable_ == "True"


def test_without_hugging_faces_package_the_name_kernels_is_not_found():
    # -S: no site-packages, so only the checkout's folder could answer to the name
    done = run_from_root(sys.executable, "-S", "-c", "import kernels")
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'kernels'" in done.stderr, done.stderr


def test_python_m_spikegpt_train_help_from_the_root():
    done = run_from_root(sys.executable, "-m", "spikegpt.train", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: spikegpt train")


def test_accelerate_launch_m_spikegpt_train_from_the_root(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=100)
    out = tmp_path / "out"
    args = tiny_run_args(corpus, out, max_steps=2, save_interval=2, eval_interval=2)[1:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "single-gpu.yaml")]
    launch += ["--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    done = run_from_root(*launch, "-m", "spikegpt.train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
