"""Strict loading: a checkpoint whose tensors do not match its config, a config too large for the machine, or a
device that is not there is a clear error before anything is served; never a half-loaded, randomly initialised
model."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikegpt.cli import main
from spikegpt.errors import CheckpointError, DeviceError
from spikegpt.hub.checkpoint import load_model, parameter_count
from spikegpt.modeling.config import FLOAT_FIELDS


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


def copy_with_config(tiny_model_dir: Path, target: Path, **fields) -> Path:
    """A copy of the tiny checkpoint whose config.json has ``fields`` changed (written as Python's json writes
    NaN and infinity: bare NaN, Infinity, -Infinity)."""
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **fields}))
    return target


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_a_config_value_that_is_not_a_finite_number_is_refused_naming_its_field(tmp_path, tiny_model_dir, field, value):
    broken = copy_with_config(tiny_model_dir, tmp_path / "broken", **{field: value})
    with pytest.raises(CheckpointError, match=rf"config\.json: {field} must be a finite number") as raised:
        load_model(broken)
    assert raised.value.name == field


def test_every_real_valued_config_field_is_checked():
    """The check reads the float fields from the annotations; these are the ones it must find."""
    assert set(FLOAT_FIELDS) == {
        "layer_norm_eps", "dropout", "lif_tau", "lif_threshold", "surrogate_alpha", "spike_count_scale"
    }  # fmt: skip


NOT_FINITE = "holds values that are not finite numbers"


def integer_weights(tensors: dict) -> None:
    tensors["model.blocks.0.att.key.weight"] = (tensors["model.blocks.0.att.key.weight"] * 100).round().int()


def all_nan(tensors: dict) -> None:
    tensors["model.blocks.1.ffn.value.weight"].fill_(float("nan"))


def one_nan(tensors: dict) -> None:
    tensors["model.blocks.0.att.time_decay"][5] = float("nan")


def one_inf(tensors: dict) -> None:
    tensors["head.weight"][3, 7] = float("-inf")


@pytest.mark.parametrize(
    ("change", "name", "says"),
    [
        (integer_weights, "model.blocks.0.att.key.weight", "is stored as I32, not as floating point weights"),
        (all_nan, "model.blocks.1.ffn.value.weight", f"{NOT_FINITE} (4,096 NaN and 0 infinite of 4,096)"),
        (one_nan, "model.blocks.0.att.time_decay", f"{NOT_FINITE} (1 NaN and 0 infinite of 32)"),
        (one_inf, "head.weight", f"{NOT_FINITE} (0 NaN and 1 infinite of "),
    ],
    ids=["int32", "all-nan", "one-nan", "one-inf"],
)
def test_weights_that_are_not_finite_floats_are_refused_naming_the_tensor(tmp_path, tiny_model_dir, change, name, says):
    broken = copy_with_tensors(tiny_model_dir, tmp_path / "broken", change)
    with pytest.raises(CheckpointError, match=re.escape(f"{name} {says}")) as raised:
        load_model(broken)
    assert raised.value.name == name


def nan_row(model_dir: Path, name: str, row: int) -> None:
    tensors = load_file(model_dir / "model.safetensors")
    tensors[name][row] = float("nan")
    save_file(tensors, model_dir / "model.safetensors")


def test_a_quantized_checkpoint_with_a_nan_row_is_refused(tmp_path, tiny_model_dir, capsys):
    quantized = tmp_path / "q8"
    assert main(["quantize", "--model", str(tiny_model_dir), "--weight-bits", "8", str(quantized)]) == 0
    nan_row(quantized, "model.blocks.1.att.output.weight", 2)
    with pytest.raises(CheckpointError, match=re.escape(f"model.blocks.1.att.output.weight {NOT_FINITE}")):
        load_model(quantized)


def test_a_nan_row_is_refused_before_quantizing_at_load(tmp_path, tiny_model_dir):
    """Quantizing would turn the row's scale into NaN and its codes into zeros: the check comes first."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    nan_row(broken, "head.weight", 0)
    with pytest.raises(CheckpointError, match=re.escape(f"head.weight {NOT_FINITE}")):
        load_model(broken, weight_bits=4)


@pytest.mark.parametrize("broken", ["config", "weights"])
def test_generate_says_what_is_not_a_number_in_one_line(tmp_path, tiny_model_dir, broken, capsys):
    model_dir = (
        copy_with_config(tiny_model_dir, tmp_path / "broken", lif_threshold=float("nan"))
        if broken == "config"
        else copy_with_tensors(tiny_model_dir, tmp_path / "broken", all_nan)
    )
    assert main(["generate", "--model", str(model_dir), "--prompt", "hi", "--max-new-tokens", "4"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spikegpt generate: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert ("lif_threshold must be a finite number" if broken == "config" else "model.blocks.1.ffn.value.weight") in (
        errors[0]
    )


def test_a_checkpoint_saved_without_a_pad_token_takes_its_tokenizers(tmp_path, tiny_model_dir):
    """Config, generation config and tokenizer saved before pad tokens: loaded, the model pads batches with the
    end-of-text token, in generate() too."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    for name, key in [("config.json", "pad_token_id"), ("generation_config.json", "pad_token_id")]:
        saved = json.loads((old / name).read_text())
        saved.pop(key, None)
        (old / name).write_text(json.dumps(saved))
    tokenizer_config = json.loads((old / "tokenizer_config.json").read_text())
    del tokenizer_config["pad_token"]
    (old / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    model, tokenizer = load_model(old)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
