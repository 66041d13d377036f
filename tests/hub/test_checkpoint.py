"""Strict loading: a checkpoint whose tensors do not match its config, a config too large for the machine, or a
device that is not there is a clear error before anything is served; never a half-loaded, randomly initialised
model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikegpt.cli import main
from spikegpt.errors import CheckpointError, DeviceError
from spikegpt.hub.checkpoint import load_model, parameter_count


def copy_with_tensors(tiny_model_dir: Path, target: Path, change) -> Path:
    """A copy of the tiny checkpoint whose tensors ``change(dict)`` edited."""
    shutil.copytree(tiny_model_dir, target)
    tensors = load_file(target / "model.safetensors")
    change(tensors)
    save_file(tensors, target / "model.safetensors")
    return target


def rename(tensors: dict) -> None:
    tensors["renamed.head.weight"] = tensors.pop("head.weight")


def drop(tensors: dict) -> None:
    del tensors["model.blocks.1.att.time_first"]


def reshape(tensors: dict) -> None:
    tensors["model.blocks.0.ffn.key.weight"] = torch.zeros(3, 3)


def extra(tensors: dict) -> None:
    tensors["model.blocks.9.att.key.weight"] = torch.zeros(3, 3)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (rename, ["missing head.weight", "unexpected renamed.head.weight"]),
        (drop, ["missing model.blocks.1.att.time_first"]),
        (reshape, ["mis-shaped model.blocks.0.ffn.key.weight ((3, 3) where the model has"]),
        (extra, ["unexpected model.blocks.9.att.key.weight"]),
    ],
    ids=["renamed", "missing", "mis-shaped", "unexpected"],
)
def test_tensors_that_do_not_match_the_config_are_a_checkpoint_error_naming_them(
    tmp_path, tiny_model_dir, change, named
):
    broken = copy_with_tensors(tiny_model_dir, tmp_path / "broken", change)
    with pytest.raises(CheckpointError) as raised:
        load_model(broken)
    for part in named:
        assert part in str(raised.value)


def test_a_config_too_large_for_the_machine_is_refused_with_its_estimate_before_allocating(tmp_path, tiny_model_dir):
    huge = tmp_path / "huge"
    shutil.copytree(tiny_model_dir, huge)
    config = json.loads((huge / "config.json").read_text())
    (huge / "config.json").write_text(json.dumps({**config, "n_layer": 10**7}))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"needs about [\d.]+ GiB .* more than the [\d.]+ GiB available"):
        load_model(huge)
    assert time.monotonic() - started < 20  # refused from the config alone: nothing of that size was built


def test_the_parameter_estimate_is_exact(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())
    ffn_pre = type(model.config)(**{**model.config.to_dict(), "ffn_pre": True, "n_layer": 3})
    built = type(model)(ffn_pre)
    assert parameter_count(ffn_pre) == sum(p.numel() for p in built.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_device_error(tiny_model_dir):
    with pytest.raises(DeviceError, match="'cuda' is not available"):
        load_model(tiny_model_dir, "cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        load_model(tiny_model_dir, "warp-drive")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["generate", "serve"])
def test_the_cli_says_so_in_one_line(tiny_model_dir, command, capsys):
    args = ["--prompt", "hi"] if command == "generate" else ["--port", "0", "--threads", str(torch.get_num_threads())]
    assert main([command, "--model", str(tiny_model_dir), "--device", "cuda", *args]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"spikegpt {command}:")]
    assert len(errors) == 1 and "Traceback" not in errors[0]
    assert errors[0].startswith(f"spikegpt {command}: error: the device 'cuda' is not available: ")


def test_the_cli_names_the_tensors_in_one_line(tmp_path, tiny_model_dir, capsys):
    broken = copy_with_tensors(tiny_model_dir, tmp_path / "broken", rename)
    assert main(["generate", "--model", str(broken), "--prompt", "hi"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spikegpt generate: error:")]
    assert len(errors) == 1 and "missing head.weight" in errors[0]
