"""Batches of prompts of different lengths through tools nobody here wrote: transformers' ``generate()`` and
``pipeline``, and lm-evaluation-harness's Hugging Face backend. The tokenizer pads on the left with its pad token,
the model skips the padded positions exactly, so every batch gives the tokens and log-likelihoods of its rows one
at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

PROMPTS = ["Hello there, how", "A", "the quick brown fox jumps over the lazy", "Wh"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    """The saved tiny model and its tokenizer as a transformers user loads them."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_tokenizer_pads_on_the_left_with_its_pad_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == model.config.pad_token_id is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam-search"])
def test_batched_generate_equals_one_row_at_a_time(model_and_tokenizer, num_beams):
    model, tokenizer = model_and_tokenizer
    options = dict(max_new_tokens=12, do_sample=False, num_beams=num_beams)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    together = model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
    for row, prompt in enumerate(PROMPTS):
        single = tokenizer([prompt], return_tensors="pt")
        alone = model.generate(**single, **options)[0, single["input_ids"].shape[1] :]
        # a row that ends (end-of-text) before the batch does is filled with the pad token
        assert torch.equal(together[row, : len(alone)], alone), prompt
        assert (together[row, len(alone) :] == tokenizer.pad_token_id).all(), prompt


def test_pipeline_batches_of_different_lengths_equal_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    options = dict(max_new_tokens=10, do_sample=False)
    batched = generator(PROMPTS, batch_size=len(PROMPTS), **options)
    assert batched == [generator(prompt, **options) for prompt in PROMPTS]


def test_lm_eval_hf_backend_batch_of_8_equals_batch_of_1(tiny_model_dir):
    """lm-evaluation-harness's ``hf`` model loading the checkpoint by path (``trust_remote_code``): log-likelihoods
    (its own right padding, no mask) and greedy generations (left padding with the attention mask) of a batch of 8
    equal those of one request at a time."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    pairs = [(context, continuation) for context in PROMPTS for continuation in (" world", "bc")]
    loglikelihood = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    until = [
        Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}), i)
        for i, prompt in enumerate(PROMPTS * 2)
    ]
    results = {}
    for batch_size in (1, 8):
        lm = HFLM(pretrained=str(tiny_model_dir), trust_remote_code=True, batch_size=batch_size, device="cpu")
        results[batch_size] = (lm.loglikelihood(loglikelihood), lm.generate_until(until))
    (scores_8, texts_8), (scores_1, texts_1) = results[8], results[1]
    # fp32: a batch's matrix products may round differently from a row's
    assert [score for score, _ in scores_8] == pytest.approx([score for score, _ in scores_1], rel=1e-6)
    assert [greedy for _, greedy in scores_8] == [greedy for _, greedy in scores_1]
    assert texts_8 == texts_1 and any(texts_1)
    assert all(score < 0 for score, _ in scores_1)
