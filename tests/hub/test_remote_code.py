"""Checkpoints that travel: every checkpoint carries the model's own code, so Hugging Face tools load it with
``trust_remote_code=True`` in a fresh interpreter that never imports spikegpt, and where spikegpt is not installed
at all, with the package's logits; a model loaded that way saves the same files again; its tokenizer loads without
a question.

The fast tests hide an installed spikegpt from the interpreter (``sys.modules["spikegpt"] = None``, as Python's own
import system marks a missing module); the slow one builds a virtual environment with only torch and transformers.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ALPHABET, lively_weights_, tiny_config
from transformers.dynamic_module_utils import get_relative_import_files

import spikegpt
from spikegpt import SpikeGPTForCausalLM
from spikegpt.hub.tokenizer import char_tokenizer
from spikegpt.modeling.code_files import AUTO_MAP, ENTRY_FILES, code_files

HIDE_SPIKEGPT = 'import sys\nsys.modules["spikegpt"] = None  # as if spikegpt were not installed\n'
QUESTION = "Do you wish to run the custom code"


def run_fresh(script: str, tmp_path: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    """``script`` in a new Python with no network (HF_HUB_OFFLINE), its own cache of remote-code modules, standard
    input closed and a working directory outside the repository (which would put spikegpt on ``sys.path``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [python, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )


def saved_checkpoint(path: Path, **config) -> Path:
    """A tiny model with lively weights and a character tokenizer saved in ``path``, with the package's logits of
    a fixed text beside it (``logits.pt``)."""
    tokenizer = char_tokenizer(ALPHABET)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), **config)), seed=7).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ids = torch.tensor([tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, path / "logits.pt")
    return path


# what a script prints for a checkpoint loaded with trust_remote_code: the logits' equality with the package's,
# greedy text, the files a re-save writes that differ, and whatever the tokenizer's loading printed
CHECK_CHECKPOINT = """
import contextlib, filecmp, io, os, sys, tempfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1] if len(sys.argv) > 1 else PATH
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
expected = torch.load(os.path.join(path, "logits.pt"))
with torch.no_grad():
    print("same logits:", torch.equal(model(expected["ids"]).logits, expected["logits"]))
    print("greedy:", model.generate(expected["ids"], max_new_tokens=6, do_sample=False)[0, -6:].tolist())
with tempfile.TemporaryDirectory() as again:
    model.save_pretrained(again)
    names = sorted(name for name in os.listdir(again))
    changed = [name for name in names if not filecmp.cmp(os.path.join(path, name), os.path.join(again, name), False)]
    print("saved again:", names, "changed:", changed)
sys.stdout.flush()
print("tokenizer loading:", file=sys.stderr, flush=True)
with contextlib.redirect_stdout(io.StringIO()) as said:
    tokenizer = AutoTokenizer.from_pretrained(path)
print("tokenizer said:", repr(said.getvalue()), type(tokenizer).__name__)
"""


def check_script(path: Path, hide_spikegpt: bool) -> str:
    return (HIDE_SPIKEGPT if hide_spikegpt else "") + f"PATH = {str(path)!r}\n" + CHECK_CHECKPOINT


def assert_travels(result: subprocess.CompletedProcess) -> None:
    """The checks of ``CHECK_CHECKPOINT``: the package's logits exactly, the same files after a re-save, and a
    tokenizer that loaded without a question or a warning."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "same logits: True" in lines
    saved = next(line for line in lines if line.startswith("saved again:"))
    written = {"config.json", "generation_config.json", "model.safetensors", *code_files()}
    assert saved == f"saved again: {sorted(written)} changed: []"
    assert QUESTION not in result.stdout
    assert "tokenizer said: '' TokenizersBackend" in lines
    after_tokenizer = result.stderr.split("tokenizer loading:", 1)[1]
    assert after_tokenizer.strip() == "", after_tokenizer  # no warning either


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Both placements; the spike-driven one with binary input spikes and layer 0's channel mix (ffn_pre)."""
    driven = dict(spike_placement="inputs", input_spikes="binary", ffn_pre=True)
    return {
        "residual": saved_checkpoint(tmp_path_factory.mktemp("residual")),
        "inputs": saved_checkpoint(tmp_path_factory.mktemp("inputs"), **driven),
    }


def test_every_checkpoint_carries_the_model_code_that_loads_it(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    carried = {path.name for path in tiny_model_dir.glob("*.py")}
    assert carried == set(code_files()) >= {"config.py", "model.py", "layout.py", "ops.py", "wkv_torch.py"}
    for name, source in code_files().items():  # one definition: the package's own files, byte for byte
        assert filecmp.cmp(tiny_model_dir / name, source, shallow=False), name
    # exactly the files transformers' loader copies: the entry modules and what they import relatively
    needed = {Path(f).name for entry in ENTRY_FILES for f in get_relative_import_files(tiny_model_dir / entry)}
    assert needed | set(ENTRY_FILES) == carried
    bundled = spikegpt.default_model_path()
    assert {path.name for path in bundled.glob("*.py")} == carried and (bundled / "config.json").is_file()


def test_auto_classes_and_pipelines_load_it_without_import_spikegpt(tiny_model_dir, tmp_path):
    script = f"""
        import sys
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline

        path = {str(tiny_model_dir)!r}
        try:
            AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
        except ValueError as e:
            print("without trust:", "trust_remote_code=True" in str(e))
        assert "spikegpt" not in sys.modules, "the script imported spikegpt by itself"
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
        base = AutoModel.from_pretrained(path, trust_remote_code=True)
        print(type(config).__name__, type(model).__name__, type(base).__name__)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer("Hello", return_tensors="pt").input_ids
        print("greedy", tokenizer.decode(model.generate(ids, max_new_tokens=5, do_sample=False)[0]))
        generator = pipeline("text-generation", model=path, trust_remote_code=True)
        print("pipeline", generator("Hello", max_new_tokens=5, do_sample=False)[0]["generated_text"])
        chat = generator([{{"role": "user", "content": "Hi"}}], max_new_tokens=4, do_sample=False)
        print("chat", chat[0]["generated_text"][-1]["role"])
    """
    result = run_fresh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "without trust: True" in lines  # the error points at trust_remote_code, not at upgrading transformers
    assert "SpikeGPTConfig SpikeGPTForCausalLM SpikeGPTModel" in lines
    greedy = next(line for line in lines if line.startswith("greedy "))
    assert next(line for line in lines if line.startswith("pipeline ")) == "pipeline " + greedy.removeprefix("greedy ")
    assert "chat assistant" in lines
    assert QUESTION not in result.stdout


@pytest.mark.parametrize("placement", ["residual", "inputs"])
def test_without_the_package_it_loads_gives_its_logits_and_saves_the_same_files(checkpoints, placement, tmp_path):
    assert_travels(run_fresh(check_script(checkpoints[placement], hide_spikegpt=True), tmp_path))


def test_where_the_package_is_installed_the_checkpoint_runs_its_kernels(checkpoints, tmp_path):
    """The carried code takes spikegpt.kernels (Triton on CUDA) where it can; the package's logits all the same."""
    script = check_script(checkpoints["inputs"], hide_spikegpt=False) + (
        "ops = sys.modules[type(model).__module__.rsplit('.', 1)[0] + '.ops']\n"
        "print('kernels from:', ops.lif.__module__)\n"
    )
    result = run_fresh(script, tmp_path)
    assert_travels(result)
    assert "kernels from: spikegpt.kernels.dispatch" in result.stdout.splitlines()


def test_a_tokenizer_loads_silently_where_the_package_is_imported(tiny_model_dir, tmp_path):
    script = f"""
        import spikegpt
        from transformers import AutoTokenizer
        print(type(AutoTokenizer.from_pretrained({str(tiny_model_dir)!r})).__name__)
    """
    result = run_fresh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "TokenizersBackend\n" and result.stderr == ""


def test_a_tokenizer_loads_silently_first_thing_in_a_new_process_with_trust_remote_code(tiny_model_dir, tmp_path):
    """Before any model is loaded and without the package, transformers' AutoTokenizer resolves the checkpoint's
    config first (``AutoConfig``), which is custom code: the Hub's convention for every custom-code checkpoint is
    ``trust_remote_code=True`` (the card says so), and with it nothing is asked or printed. (Without it, stock
    transformers asks its question before it falls back; no file of the checkpoint can avoid that.)"""
    script = HIDE_SPIKEGPT + f"""
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True)
print(type(tokenizer).__name__, tokenizer("Hello").input_ids == tokenizer.encode("Hello"))
"""
    result = run_fresh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "TokenizersBackend True\n" and result.stderr == ""


@pytest.mark.slow
def test_a_fresh_environment_with_only_torch_and_transformers_loads_it(checkpoints, tmp_path):
    """A new virtual environment (no system packages) gets torch and transformers at the versions installed here,
    and nothing else: about two minutes of pip on two cores."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    versions = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *versions],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = run_fresh("import spikegpt", tmp_path, python)
    assert "No module named 'spikegpt'" in probe.stderr, "spikegpt must not be importable in the fresh environment"
    for path in checkpoints.values():
        assert_travels(run_fresh(check_script(path, hide_spikegpt=False), tmp_path, python))
