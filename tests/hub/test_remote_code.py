"""Loading a checkpoint with Hugging Face tools alone: ``trust_remote_code=True`` in a fresh interpreter whose
script never imports spikegpt (the checkpoint's own code files do), and a message that says how to install the
package where it is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import spikegpt
from spikegpt.hub.code_files import AUTO_MAP, CODE_FILES, INSTALL_HINT


def run_fresh(script: str, tmp_path) -> subprocess.CompletedProcess:
    """``script`` in a new Python with no network (HF_HUB_OFFLINE) and its own cache of remote-code modules."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, timeout=300
    )


def test_every_checkpoint_carries_the_code_that_loads_it(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    for name in CODE_FILES:
        assert (tiny_model_dir / name).is_file(), name
    for bundled in ("config.json", *CODE_FILES):
        assert (spikegpt.default_model_path() / bundled).is_file(), bundled


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


def test_without_the_package_the_error_says_how_to_install_it(tiny_model_dir, tmp_path):
    script = f"""
        import sys
        sys.modules["spikegpt"] = None  # as if spikegpt were not installed: importing it raises ImportError
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True)
        except ImportError as e:
            print(e)
    """
    result = run_fresh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert INSTALL_HINT in result.stdout
    assert "pip install spikegpt" in INSTALL_HINT


@pytest.mark.parametrize("name", sorted(CODE_FILES))
def test_the_code_files_hold_no_model_code(tiny_model_dir, name):
    text = (tiny_model_dir / name).read_text()
    assert "import spikegpt" in text.replace("from spikegpt.", "import spikegpt.") and "class " not in text
