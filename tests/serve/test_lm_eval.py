"""lm-evaluation-harness's ``local-completions`` model against a real server, with its default settings: it finds
``/tokenizer_info`` and tokenizes through the server (no Hub, no tokenizer name), then scores every choice of a
small multiple-choice task the test writes. Its log-likelihoods equal a forward pass of the served model.

Marked slow: lm_eval is installed with the test extras, but starting it (its imports) takes 30-40 s of wall time
on two shared cores, more than a default-suite test may."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from serve_helpers import run_server, tiny_settings

DOCS = [
    {"question": "Hello there, my", "choices": [" friend", " dog", "!"], "answer": 0},
    {"question": "The café in 1990", "choices": [" was open.", " — 東京"], "answer": 1},  # unknown characters too
]


def write_task(directory) -> None:
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in DOCS))
    (directory / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def forward_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """As lm-eval splits a request: the continuation's tokens are those of context + continuation after the
    context's."""
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))


@pytest.mark.slow
def test_local_completions_scores_a_task_offline(tiny_model_dir, tmp_path):
    write_task(tmp_path)
    with run_server(tiny_settings(tiny_model_dir)) as server:
        model_args = f"model={server.host.model_name},base_url={server.url}/v1/completions"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
        command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args]
        command += ["--tasks", "tiny_choice", "--include_path", str(tmp_path)]
        command += ["--output_path", str(tmp_path / "out"), "--log_samples"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "Using remote tokenizer" in result.stderr
        samples = [json.loads(line) for path in (tmp_path / "out").rglob("samples_tiny_choice*.jsonl")
                   for line in path.read_text().splitlines()]  # fmt: skip
        assert len(samples) == len(DOCS)
        for sample in samples:
            for arguments, response in zip(sample["arguments"].values(), sample["resps"], strict=True):
                expected = forward_loglikelihood(
                    server.host.model, server.host.tokenizer, arguments["arg_0"], arguments["arg_1"]
                )
                assert float(response[0][0]) == pytest.approx(expected, abs=1e-4), arguments
