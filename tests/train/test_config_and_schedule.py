"""Run options (files, flags, shipped examples, --help), the schedules, and the L2Wrap penalty."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shlex

import pytest
import torch
from conftest import lively_weights_, tiny_config
from train_helpers import offline  # noqa: F401 (offline is an autouse fixture)

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.cli import build_parser
from spikegpt.errors import TrainingError
from spikegpt.train.cli import SHIPPED, command_line, config_from_args
from spikegpt.train.config import TrainConfig, default_config_path, make_config, read_config_file
from spikegpt.train.objective import l2wrap_penalty
from spikegpt.train.schedule import learning_rate, lif_threshold


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {n_layer: 3, n_embd: 48}\nlr: 0.002\nbatch_size: 4\nadam_betas: [0.8, 0.9]\n")
    cfg = parse("--config", str(path), "--lr", "0.01", "--n-embd", "64", "--no-spiking", "--max-steps", "7")
    assert cfg.lr == 0.01 and cfg.batch_size == 4 and cfg.max_steps == 7 and cfg.adam_betas == (0.8, 0.9)
    assert cfg.model == {"n_layer": 3, "n_embd": 64, "spiking": False}
    json_path = tmp_path / "run.json"
    json_path.write_text('{"lr": 0.003, "model": {"ctx_len": 32}}')
    assert parse("--config", str(json_path)).fresh_model_fields()["ctx_len"] == 32


def test_the_recorded_command_repeats_the_run(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.002\n")
    argv = ["train", "--config", str(path), "--n-layer", "3", "--no-spiking", "--train-tokenizer"]
    argv += ["--adam-betas", "0.8", "0.9", "--resume", "--max-steps", "5"]
    args = build_parser().parse_args(argv)
    command = command_line(args.train_parser, args)
    assert command.startswith("spikegpt train ")
    again = build_parser().parse_args(shlex.split(command)[1:])
    assert config_from_args(again) == config_from_args(args)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(TrainingError, match="unknown option 'learning_rate'"):
        make_config({"learning_rate": 1.0}, {})
    with pytest.raises(TrainingError, match="precision must be one of fp32, bf16, fp16"):
        make_config({"precision": "fp8"}, {})
    with pytest.raises(TrainingError, match="--push-to-hub needs --hub-id"):
        make_config({}, {"push_to_hub": True})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TrainingError, match="must hold a mapping"):
        read_config_file(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name):
    cfg = make_config(read_config_file(default_config_path(name)), {})
    cfg.run_length_given()
    SpikeGPTConfig(vocab_size=256, **cfg.fresh_model_fields())  # every model field is a real one


def test_help_explains_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(TrainConfig):
        if field.name != "model":
            assert "--" + field.name.replace("_", "-") in text, field.name
    for flag in ("--config", "--n-layer", "--no-spiking", "--train-tokenizer", "--resume"):
        assert flag in text


def test_learning_rate_warms_up_then_decays_to_the_minimum():
    lrs = [learning_rate(s, peak=1.0, minimum=0.1, warmup_steps=4, decay_steps=12) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[8] == pytest.approx(0.55) and lrs[12] == lrs[13] == 0.1
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert learning_rate(0, 1.0, 0.0, 0, 10) == 1.0  # no warmup: the first step at the peak


def test_threshold_annealing_schedule():
    assert [lif_threshold(s, 0.2, 1.0, 4) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert lif_threshold(0, None, 1.5, 0) == 1.5


def test_the_threshold_set_on_the_config_reaches_every_lif_layer(seed):
    """The loop anneals by writing model.config.lif_threshold: every LIF layer must read it at its next call."""
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config()), seed).eval()
    ids = torch.randint(0, 60, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rates = []
        for threshold in (0.25, 1.0):
            model.config.lif_threshold = threshold
            rates.append(model(ids, output_spike_stats=True).spike_stats.site_rates()[1:])
    assert (rates[0] >= rates[1]).all() and (rates[0] > rates[1]).any()


def test_l2wrap_penalty_has_the_originals_gradient(seed):
    """The original's L2Wrap adds 1e-4 * max / (B*T) to the gradient of each position's largest logit."""
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    l2wrap_penalty(logits).backward()
    expected = torch.zeros_like(logits)
    top, where = logits.detach().max(dim=-1, keepdim=True)
    expected.scatter_(-1, where, top * 1e-4 / (3 * 5))
    assert torch.allclose(logits.grad, expected, rtol=1e-6, atol=0)
    assert math.isclose(float(l2wrap_penalty(torch.zeros(1, 1, 4))), 0.0)
