"""POST /v1/chat/completions over real HTTP, and the chat prompt (default format or a template)."""

from __future__ import annotations

from serve_helpers import run_server, stream_post, tiny_settings

pytest_plugins = ["serve_fixtures"]  # the server and client fixtures

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
LONG = {"ignore_eos": True}


def chat(client, **body) -> dict:
    response = client.post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_completion_shape(client, server):
    body = chat(client, max_tokens=10, seed=1, **LONG)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("length", "stop")
    prompt = "System:\nBe brief.\n\nUser:\nHi there\n\nAssistant:\n"
    assert body["usage"]["prompt_tokens"] == len(server.host.tokenizer.encode(prompt))
    assert body["usage"]["completion_tokens"] == body["energy"]["generated_tokens"]
    assert body["energy"]["rules"]["strict"]["energy_j"] > 0


def test_chat_stream_role_first_then_content_then_energy(client):
    request = {"max_tokens": 12, "seed": 4, "temperature": 0.8, **LONG}
    whole = chat(client, **request)["choices"][0]["message"]["content"]
    events = stream_post(client, "/v1/chat/completions", {"messages": MESSAGES, **request})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}  # no empty content, ever
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert chunks[-1]["energy"]["generated_tokens"] == 12 or chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_default_format_stops_before_the_next_user_turn(client):
    response = client.post("/tokenize", json={"messages": MESSAGES})
    text = "System:\nBe brief.\n\nUser:\nHi there\n\nAssistant:\n"
    assert response.json()["tokens"] == client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    body = chat(client, max_tokens=200, temperature=0, **LONG)
    assert "\n\n" not in body["choices"][0]["message"]["content"]


def test_max_completion_tokens(client):
    assert chat(client, max_completion_tokens=3, seed=1, **LONG)["usage"]["completion_tokens"] == 3


def test_chat_logprobs(client):
    body = chat(client, max_tokens=4, seed=2, logprobs=True, top_logprobs=2, **LONG)
    content = body["choices"][0]["logprobs"]["content"]
    tokens = "".join(e["token"] for e in content)  # special tokens appear here, not in the text
    assert tokens.replace("<|endoftext|>", "") == body["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
    assert chat(client, max_tokens=2, seed=2, **LONG)["choices"][0]["logprobs"] is None


def test_content_parts_are_joined(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hi there"}]
    assert (
        client.post("/tokenize", json={"messages": parts}).json()
        == client.post("/tokenize", json={"messages": plain}).json()
    )


def test_chat_template_file_and_tokens_cap(tiny_model_dir, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(
        "{% for m in messages %}-{{ m.role }}-{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}-assistant-"
        "{% endif %}"
    )
    settings = tiny_settings(tiny_model_dir, chat_template=str(template), max_tokens_cap=5)
    with run_server(settings) as server, server.client() as client:
        tokens = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()["tokens"]
        assert server.host.tokenizer.decode(tokens) == "-user-Hi\n-assistant-"
        # no max_tokens: the server's cap
        assert chat(client, seed=1, **LONG)["usage"]["completion_tokens"] == 5


def test_apply_chat_template_writes_the_servers_prompt(client, tiny_model_dir):
    """One definition: the checkpoint's tokenizer (as Hugging Face loads it, without spikegpt's loader) renders the
    very text the server prompts the model with, for every role and content shape."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [
        MESSAGES,
        [{"role": "user", "content": "  padded  "}],
        [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "tool", "content": "d"},
        ],
    ]
    for messages in conversations:
        served = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert served == tokenizer.encode(text, add_special_tokens=False), text
        assert client.post("/detokenize", json={"tokens": served}).json()["prompt"] == text


def test_a_chat_without_max_tokens_is_one_paragraph_without_a_leading_newline(client):
    """The format's stop rule ends the reply at its first blank line, so a client's default request (no max_tokens)
    gets one paragraph, finished with "stop", never a reply cut at the server's cap."""
    for seed in range(4):
        body = chat(client, seed=seed, temperature=0.8)
        choice = body["choices"][0]
        text = choice["message"]["content"]
        assert choice["finish_reason"] == "stop", (seed, body["usage"])
        assert text and not text.startswith("\n") and "\n\n" not in text, (seed, text)
