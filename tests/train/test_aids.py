"""The training aids of spike-driven models: distillation, the sparsity penalty and the annealing schedules against
hand computations, conversion from a non-spiking checkpoint, the differentiable spikes per input, and a run with
every aid on that stops and resumes exactly as an uninterrupted one."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import lively_weights_, tiny_config
from safetensors.torch import load_file
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)

from spikegpt import SpikeGPTForCausalLM
from spikegpt.cli import main
from spikegpt.errors import TrainingError
from spikegpt.train.config import make_config
from spikegpt.train.objective import InputSpikeRate, Objective, distillation_loss, spike_penalty
from spikegpt.train.schedule import ramp, spike_count_max, spike_count_scale, weight_warmup
from spikegpt.train.trainer import converted_model

# -- the objective's terms by hand ------------------------------------------------------------------------------


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_by_hand():
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over positions."""
    student = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [1.0, -1.0, 2.0]]
    t = 2.0
    kl = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p, q = softmax([v / t for v in t_row]), softmax([v / t for v in s_row])
        kl.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    expected = t * t * sum(kl) / len(kl)
    got = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(torch.tensor([teacher]), torch.tensor([teacher]), t)) == pytest.approx(0, abs=1e-7)


def test_the_objective_mixes_the_terms_by_their_weights():
    """(1 − w)·CE + w·T²·KL, plus the penalty's weight (ramping up over its warm-up) times the spikes per input
    above the target."""
    cfg = make_config({}, {"distill_weight": 0.25, "distill_temperature": 2.0, "spike_penalty": 0.5,
                           "spike_target": 0.1, "spike_penalty_warmup_steps": 4})  # fmt: skip
    logits, teacher = torch.tensor([[[1.0, 2.0, 0.5]]]), torch.tensor([[[2.0, 1.0, 0.0]]])
    ce = torch.tensor(1.5)
    distill = float(distillation_loss(logits, teacher, 2.0))
    objective, terms = Objective(cfg)(2, ce, logits, teacher, torch.tensor(0.3))
    # step 2 of a 4-step warm-up: weight 0.25; 0.3 spikes per input, 0.2 above the target
    assert float(objective) == pytest.approx(0.75 * 1.5 + 0.25 * distill + 0.25 * 0.2, rel=1e-6)
    assert float(terms["distill"]) == pytest.approx(distill)
    plain, terms = Objective(make_config({}, {}))(2, ce, logits)
    assert float(plain) == 1.5 and terms == {}


def test_spike_penalty_by_hand():
    rate = torch.tensor(0.3)
    assert float(spike_penalty(rate, 0.5, None)) == pytest.approx(0.15)
    assert float(spike_penalty(rate, 0.5, 0.1)) == pytest.approx(0.1)
    assert float(spike_penalty(rate, 0.5, 0.4)) == 0.0  # below the target: nothing


# -- schedules ----------------------------------------------------------------------------------------------------


def test_schedules_at_chosen_steps():
    assert [ramp(s, 0.5, 1.0, 4) for s in (0, 1, 2, 4, 9)] == [0.5, 0.625, 0.75, 1.0, 1.0]
    assert ramp(3, None, 1.0, 4) == 1.0
    # the counts' k: geometric, 4 -> 0.25 over 100 steps halves every 25 steps
    assert [spike_count_scale(s, 4.0, 0.25, 100) for s in (0, 25, 50, 75, 100, 500)] == pytest.approx(
        [4.0, 2.0, 1.0, 0.5, 0.25, 0.25]
    )
    assert spike_count_scale(10, None, 0.7, 100) == 0.7
    # K: linear to whole numbers, a half going to the target's side
    assert [spike_count_max(s, 4, 1, 300) for s in (0, 49, 50, 149, 150, 249, 250, 299, 300)] == [
        4, 4, 3, 3, 2, 2, 1, 1, 1,
    ]  # fmt: skip
    assert [spike_count_max(s, 1, 3, 4) for s in (0, 1, 2, 3, 4)] == [1, 2, 2, 3, 3]
    assert all(isinstance(spike_count_max(s, 4, 1, 300), int) for s in range(0, 310, 7))
    assert [weight_warmup(s, 0.2, 4) for s in (0, 1, 4, 8)] == pytest.approx([0.0, 0.05, 0.2, 0.2])
    assert weight_warmup(0, 0.2, 0) == 0.2


# -- spikes per input, differentiable ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["counts", "binary"])
def test_input_spike_rate_is_the_reads_spikes_per_input_and_has_a_gradient(encoding, seed):
    fields = dict(spike_placement="inputs", input_spikes=encoding, lif_threshold=0.25, learned_thresholds=True)
    torch.manual_seed(seed)
    model = lively_weights_(SpikeGPTForCausalLM(tiny_config(**fields)), seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("log_threshold"):
                param.zero_()
    rate = InputSpikeRate(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    model.train()
    stats = model(ids, output_spike_stats=True).spike_stats
    widths = [model.config.ffn_hidden if p.endswith("ffn.value") else 32 for p in model.model.projections]
    spikes_per_input = float(stats.reads[..., 1].sum()) / (ids.numel() * sum(widths))
    measured = rate.rate()
    assert float(measured.detach()) == pytest.approx(spikes_per_input, rel=1e-6) and spikes_per_input > 0
    measured.backward()
    thresholds = [p.grad for n, p in model.named_parameters() if n.endswith("log_threshold")]
    assert all(g is not None for g in thresholds) and sum(float(g.sum()) for g in thresholds) < 0  # higher: fewer
    model.eval()
    with torch.no_grad():
        model(ids)
    assert rate.elements == 0  # evaluation is not counted
    rate.remove()


# -- conversion ------------------------------------------------------------------------------------------------------


def test_conversion_keeps_every_shared_tensor_and_names_the_new_ones(tmp_path, caplog, seed):
    torch.manual_seed(seed)
    twin = lively_weights_(SpikeGPTForCausalLM(tiny_config(spiking=False)), seed)
    twin.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    overrides = dict(spiking=True, spike_placement="inputs", input_spikes="counts", spike_count_max=1,
                     learned_thresholds=True)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="spikegpt.train.trainer"):
        converted = converted_model(str(tmp_path), overrides)
    assert converted.layout.spiking_inputs and converted.config.spike_count_max == 1
    state = converted.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    new = sorted(set(state) - set(saved))
    assert new and all(name.endswith("log_threshold") for name in new)
    assert all(not state[name].any() for name in new)  # exp(0) = 1: the thresholds as configured
    message = next(r.getMessage() for r in caplog.records if "initialised from" in r.getMessage())
    assert f"{len(saved)} tensors kept" in message and all(name in message for name in new)
    assert "left behind: none" in message
    with pytest.raises(TrainingError, match="the options change the shape of"):
        converted_model(str(tmp_path), {"ffn_hidden": 64})


# -- a run with the aids on ------------------------------------------------------------------------------------------


def training_records(output_dir) -> list[dict]:
    """The training log's records without their timings."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "wall_time_s")} for r in records if "loss" in r]


AIDS = {
    "counts": dict(
        spike_placement="inputs", input_spikes="counts", spike_count_max=1, spike_count_scale=0.5,
        spike_count_scale_start=2.0, spike_count_max_start=3, count_anneal_steps=4,
    ),
    "binary": dict(spike_placement="inputs", input_spikes="binary", lif_threshold=0.5, threshold_start=0.25,
                   threshold_anneal_steps=4),
}  # fmt: skip


@pytest.mark.parametrize("encoding", AIDS)
def test_a_run_with_every_aid_resumes_exactly(tmp_path, encoding):
    """Converted from a non-spiking model, distilled from it, annealed, with learned thresholds and the sparsity
    penalty: stopped at step 3 (mid-ramp, mid-warm-up) and resumed, it ends where an uninterrupted run ends, bit for
    bit, and logs the schedules' values."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    twin = tmp_path / "twin"
    assert main(tiny_run_args(corpus, twin, max_steps=2, no_spiking=True, eval_interval=0)) == 0
    options = dict(init_from=twin, teacher=twin, spiking=True, learned_thresholds=True, distill_weight=0.7,
                   distill_temperature=2.0, spike_penalty=0.1, spike_target=0.05, spike_penalty_warmup_steps=4,
                   dropout=0.1, eval_interval=0, lr_decay_steps=6, **AIDS[encoding])  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "straight", **options)) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "split", **{**options, "max_steps": 3})) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "split", resume=True, **options)) == 0
    straight, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("straight", "split"))
    assert straight.keys() == resumed.keys() and any(k.endswith("log_threshold") for k in straight)
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    log = training_records(tmp_path / "straight")
    assert log == training_records(tmp_path / "split")
    assert all(r["distill"] > 0 and r["spikes_per_input"] > 0 and 0 < r["zero_inputs"] < 1 for r in log)
    if encoding == "counts":
        assert [r["spike_count_scale"] for r in log] == pytest.approx([2.0, 2**0.5, 1.0, 2**-0.5, 0.5, 0.5])
        assert [r["spike_count_max"] for r in log] == [3, 2, 2, 1, 1, 1]
    else:
        assert [r["lif_threshold"] for r in log] == [0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())  # the targets, not a ramp's value
    assert config["learned_thresholds"] and config["spike_placement"] == "inputs"
    assert (config["spike_count_scale"], config["spike_count_max"], config["lif_threshold"]) == (
        options.get("spike_count_scale", 1.0),
        options.get("spike_count_max", 4),
        options.get("lif_threshold", 1.0),
    )


# -- options -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"spike_count_scale_start": 2.0}, "spike_count_scale_start needs count_anneal_steps > 0"),
        ({"spike_count_max_start": 0, "count_anneal_steps": 5}, "spike_count_max_start must be at least 1"),
        ({"distill_weight": 1.5}, "distill_weight must be in [0, 1]"),
        ({"distill_temperature": 0.0}, "distill_temperature must be positive"),
        ({"spike_penalty": -1.0}, "spike_penalty must be 0 (off) or positive"),
        ({"spike_target": 0.1}, "spike_target needs spike_penalty > 0"),
    ],
)
def test_aid_options_are_checked(values, message):
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make_config({}, values)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(spike_penalty=0.1), "spike_penalty needs a spike-driven model"),
        (dict(spike_count_scale_start=2.0, count_anneal_steps=3), "needs a model whose projections read spike counts"),
        (dict(teacher="nowhere-such-model"), "nowhere-such-model"),
    ],
)
def test_aids_the_model_cannot_take_are_one_line_errors(tmp_path, capsys, options, message):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=40)
    assert main(tiny_run_args(corpus, tmp_path / "out", **options)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spikegpt ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path, capsys):
    other = write_corpus(tmp_path / "other.txt", lines=40)
    other.write_text(other.read_text().upper())  # another character set
    assert main(tiny_run_args(other, tmp_path / "teacher", max_steps=1, eval_interval=0)) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    corpus = write_corpus(tmp_path / "corpus.txt", lines=40)
    assert main(tiny_run_args(corpus, tmp_path / "out", teacher=tmp_path / "teacher")) == 1
    assert "its tokenizer is not the run's" in capsys.readouterr().err
