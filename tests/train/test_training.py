"""`spikegpt train` end to end on a tiny model: outputs, metrics, evaluation shared with `spikegpt eval`, exact
resume, a killed save, publishing up to the upload, and one-line errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from train_helpers import offline, tiny_run_args, write_corpus  # noqa: F401 (offline is an autouse fixture)
from transformers import AutoModelForCausalLM

import spikegpt  # noqa: F401 (registers the model with AutoModelForCausalLM)
from spikegpt.cli import main
from spikegpt.train.checkpointing import checkpoints, load_trainer_state, resolve_resume


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_losses(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(output_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run (6 steps, evaluation and checkpoints every 3), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("run")
    corpus = write_corpus(root / "corpus.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))
        AcceleratorState._reset_state(reset_partial_state=True)
        assert main(tiny_run_args(corpus, root / "out")) == 0
        AcceleratorState._reset_state(reset_partial_state=True)
    return corpus, root / "out"


def test_a_run_leaves_a_loadable_model_checkpoints_and_metrics(finished_run):
    _, out = finished_run
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 2 and model.config.vocab_size > 20
    assert [p.name for p in checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 <= r["firing_rate"] <= 1 for r in train)
    assert train[0]["lr"] == pytest.approx(3e-3 / 2)  # warmup: step 1 of 2
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert set(evals[-1]["val_site_rates"]) == {
        "embedding",
        *(f"blocks.{i}.{s}.lif" for i in (0, 1) for s in ["att", "ffn"]),
    }
    card = (out / "README.md").read_text()
    assert ("bits per byte" in card and "spikegpt train" in card) or "spikegpt.train" in card


def test_metrics_go_to_tensorboard_when_installed(finished_run):
    pytest.importorskip("tensorboard")
    _, out = finished_run
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_eval_command_matches_the_training_loops_evaluation(finished_run, capsys):
    corpus, out = finished_run
    final = [r for r in read_jsonl(out / "metrics.jsonl") if "val_loss" in r][-1]
    args = ["eval", "--model", str(out), "--dataset", str(corpus), "--max-blocks", "8", "--batch-size", "4", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    # the same blocks, batches and fp32 weights: the same numbers up to summation order
    assert result["loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    assert result["firing_rate"] == pytest.approx(final["val_firing_rate"], rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # a character vocabulary of ASCII text: one byte per character per token
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2))
    assert result["bits_per_character"] == pytest.approx(result["bits_per_byte"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, precision):
    """Through accelerate's save_state / load_state: weights, optimizer, RNG and data position (bf16 autocast on
    a CPU as well)."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    common = dict(dropout=0.1, lr_decay_steps=6, eval_interval=0, save_interval=3, precision=precision)
    assert main(tiny_run_args(corpus, tmp_path / "straight", **common)) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "split", max_steps=3, **common)) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "split", resume=True, **common)) == 0
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "split" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "straight")


KILLED_SAVE = """
import os, signal, sys, torch
from spikegpt.cli import main

real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if os.path.basename(str(f)) == "optimizer.bin" and ".tmp-checkpoint-4" in str(f):
        os.kill(os.getpid(), signal.SIGKILL)  # killed midway: weights and optimizer written, the rest not

torch.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    args = tiny_run_args(corpus, out, save_interval=2, eval_interval=0, keep_last=2)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_SAVE), *args], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert (out / ".tmp-checkpoint-4" / "model.safetensors").exists()  # the save did start
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2"]
    assert resolve_resume("latest", out).name == "checkpoint-2"
    assert load_trainer_state(out / "checkpoint-2")["step"] == 2
    assert main([*args, "--resume"]) == 0
    assert [p.name for p in checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    assert not (out / ".tmp-checkpoint-4").exists()


def test_threshold_annealing_ramps_to_the_models_threshold(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    assert main(tiny_run_args(corpus, out, threshold_start=0.5, threshold_anneal_steps=4, eval_interval=0)) == 0
    thresholds = [r["lif_threshold"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert thresholds == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert json.loads((out / "config.json").read_text())["lif_threshold"] == 1.0


def test_push_to_hub_uploads_the_model_files(tmp_path, monkeypatch):
    """The Hub cannot be reached here: a stand-in HfApi records the calls the real one would receive."""
    calls = []

    class RecordingApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs, sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))
            return type("Commit", (), {"commit_url": "https://hub.invalid/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    assert main(tiny_run_args(corpus, out, push_to_hub=True, hub_id="someone/spikegpt-tiny", max_steps=2)) == 0
    (name, repo), (upload, kwargs, present) = calls
    assert name == "create_repo" and repo["repo_id"] == "someone/spikegpt-tiny" and repo["exist_ok"]
    assert upload == "upload_folder" and Path(kwargs["folder_path"]) == out
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(present)
    allowed = kwargs["allow_patterns"]
    assert "optimizer.pt" not in allowed and not any("checkpoint" in p or "metrics" in p for p in allowed)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: tiny_run_args(d / "missing.txt", d / "out"), "missing.txt: no such file or directory"),
        (lambda d: tiny_run_args(None, d / "out"), "say what to train on: --dataset"),
        (lambda d: tiny_run_args(d / "empty.txt", d / "out"), "empty; it holds no text to train on"),
        (lambda d: tiny_run_args(d / "docs.jsonl", d / "out"), "no 'text' field (fields: body)"),
        (
            lambda d: ["train", "--config", str(d / "bad.yaml"), "--dataset", str(d / "docs.jsonl")],
            "unknown option 'lr_max'",
        ),
        (lambda d: tiny_run_args(d / "docs.jsonl", d / "out", resume=True), "no complete checkpoint"),
        (
            lambda d: ["eval", "--model", str(d / "nowhere"), "--dataset", str(d / "docs.jsonl")],
            "no such model directory",
        ),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, make_args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "docs.jsonl").write_text('{"body": "no text field here"}\n')
    (tmp_path / "bad.yaml").write_text("lr_max: 0.1\n")
    assert main(make_args(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spikegpt ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """2 micro-batches of 2 blocks visit the same blocks as 1 batch of 4 and average the same gradient."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    common = dict(max_steps=3, eval_interval=0, save_interval=0, dropout=0.0)
    assert main(tiny_run_args(corpus, tmp_path / "big", batch_size=4, **common)) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(tiny_run_args(corpus, tmp_path / "accum", batch_size=2, grad_accum=2, **common)) == 0
    big, accum = (load_file(tmp_path / name / "model.safetensors") for name in ("big", "accum"))
    for name, tensor in big.items():
        # equal up to float summation order; Adam's first steps are ~lr in size, so 1e-5 is far below a real change
        torch.testing.assert_close(accum[name], tensor, rtol=0, atol=1e-5, msg=name)
    assert train_losses(tmp_path / "big") == pytest.approx(train_losses(tmp_path / "accum"), rel=1e-5)
