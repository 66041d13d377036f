"""Quantization-aware training: fake-quantized products during training, a model on the grid at the end, and the
cosine schedule with warm restarts."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)
from transformers import AutoModelForCausalLM

import spikegpt  # noqa: F401 (registers the model with AutoModelForCausalLM)
from spikegpt.cli import main
from spikegpt.errors import TrainingError
from spikegpt.quant.grids import dequantize, quantize_weight, quantized_linears
from spikegpt.train.config import make_config
from spikegpt.train.schedule import learning_rate


def test_a_qat_run_trains_through_the_grid_and_exports_a_quantized_model(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    args = tiny_run_args(corpus, out, weight_bits=4, lr_cycles=2, max_steps=6, eval_interval=0, save_interval=3)
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["weight_bits"] == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, linear in quantized_linears(model):
        codes, scale = quantize_weight(linear.weight, 4)
        assert torch.equal(dequantize(codes, scale), linear.weight), name
    # the checkpoints keep the float master weights (off the grid) and no weight_bits, so the run resumes from them
    checkpoint = out / "checkpoint-6"
    assert json.loads((checkpoint / "config.json").read_text()).get("weight_bits") is None
    master = AutoModelForCausalLM.from_pretrained(checkpoint).head.weight
    assert not torch.equal(dequantize(*quantize_weight(master, 4)), master)
    assert torch.equal(dequantize(*quantize_weight(master, 4)), model.head.weight)
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # warmup over 2 steps, then two cosine cycles of 2 steps: each starts again at the peak
    assert lrs[2] == lrs[4] == 3e-3 and lrs[3] < lrs[4] and lrs[5] < lrs[4]


def test_learning_rate_cycles_restart_at_the_peak():
    one = [learning_rate(s, 1.0, 0.0, 0, 12) for s in range(12)]
    assert one == [learning_rate(s, 1.0, 0.0, 0, 12, cycles=1) for s in range(12)]
    three = [learning_rate(s, 1.0, 0.0, 0, 12, cycles=3) for s in range(13)]
    assert three[0] == three[4] == three[8] == 1.0  # each cycle starts at the peak
    assert three[:4] == pytest.approx([learning_rate(s, 1.0, 0.0, 0, 4) for s in range(4)])
    assert three[12] == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"weight_bits": 2}, "weight_bits must be one of 8, 4, 1"),
        ({"weight_bits": 4, "export_dtype": "bf16"}, "weight_bits needs export_dtype fp32"),
        ({"lr_cycles": 0}, "lr_cycles must be at least 1"),
    ],
)
def test_qat_options_are_checked(values, message):
    with pytest.raises(TrainingError, match=message):
        make_config(values, {})
