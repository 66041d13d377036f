"""What the server tells about tokens: unknown characters counted in /tokenize and usage, /tokenizer_info for
clients that tokenize through the server, and score-only completions (max_tokens 0 with echo and logprobs)."""

from __future__ import annotations

import math

import pytest
import torch

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

UNKNOWN_TEXT = "In 1990 the café — 東京"  # "—", "東" and "京" are outside the tiny alphabet; é and digits are in it


def test_tokenize_and_usage_count_unknown_characters(client, server):
    body = client.post("/tokenize", json={"prompt": UNKNOWN_TEXT}).json()
    assert body["unknown_characters"] == 3
    assert body["count"] == len(UNKNOWN_TEXT)  # one token per character, unknown ones included
    assert body["tokens"].count(server.host.tokenizer.unk_token_id) == 3
    usage = client.post("/v1/completions", json={"prompt": UNKNOWN_TEXT, "max_tokens": 2}).json()["usage"]
    assert usage["prompt_tokens"] == len(UNKNOWN_TEXT) and usage["unknown_characters"] == 3
    chat = {"messages": [{"role": "user", "content": "東京"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat).json()["usage"]["unknown_characters"] == 2
    assert client.post("/tokenize", json={"prompt": "plain"}).json()["unknown_characters"] == 0


def test_tokenizer_info(client, server):
    info = client.get("/tokenizer_info").json()
    tokenizer = server.host.tokenizer
    assert info["eos_token"] == tokenizer.eos_token == "<|endoftext|>"
    assert info["unk_token"] == tokenizer.unk_token
    assert info["chat_template"] == tokenizer.chat_template
    assert info["bos_token"] is None and info["vocab_size"] == server.host.config.vocab_size


@pytest.mark.parametrize("prompt_as", ["text", "token ids"])
def test_a_score_only_request_returns_the_prompts_log_probabilities(client, server, prompt_as):
    """max_tokens 0 with echo (the legacy completions API): nothing is generated; every prompt token but the first
    has its log-probability under the model, equal to a forward pass over the prompt."""
    text = "Hello there, world"
    ids = server.host.tokenizer.encode(text)
    body = client.post(
        "/v1/completions",
        json={"prompt": text if prompt_as == "text" else ids, "max_tokens": 0, "echo": True, "logprobs": 2},
    ).json()
    (choice,) = body["choices"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == len(ids)
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) and logprobs["token_logprobs"][0] is None
    with torch.no_grad():
        expected = torch.log_softmax(server.host.model(torch.tensor([ids])).logits[0].double(), dim=-1)
    for position, (token, value) in enumerate(zip(ids[1:], logprobs["token_logprobs"][1:], strict=True)):
        assert math.isclose(value, float(expected[position, token]), abs_tol=1e-4)
        assert len(logprobs["top_logprobs"][position + 1]) == 2
    # without echo there is nothing to return but an empty text
    plain = client.post("/v1/completions", json={"prompt": text, "max_tokens": 0}).json()
    assert plain["choices"][0]["text"] == "" and plain["usage"]["completion_tokens"] == 0


def test_a_streamed_score_only_request_ends_properly(client):
    with client.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 0, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"


def test_chat_still_needs_at_least_one_token(client):
    messages = [{"role": "user", "content": "Hi"}]
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
