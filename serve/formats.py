"""How the two OpenAI endpoints shape choices, stream chunks and log-probabilities.

``Choice`` accumulates what one generated sequence has produced; ``CompletionFormat`` (``/v1/completions``) and
``ChatFormat`` (``/v1/chat/completions``) turn it, or a piece of it, into the wire format. Plain dicts, not
pydantic models: building them is on the per-token path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerFast

from spikegpt.modeling.stats import SpikeStats
from spikegpt.runtime.engine import GenerationEvent
from spikegpt.runtime.sampling import TokenChoice


class TokenTexts:
    """The text of single tokens (what log-probabilities are reported for), decoded once per token id."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text


@dataclass
class Choice:
    """One sequence of a request, as the client will see it. ``echo``: text to put before the generated text;
    ``prompt_ids`` are needed to report the prompt's log-probabilities with echo."""

    index: int
    request_id: str
    prompt_ids: list[int]
    echo: str | None = None
    text: str = ""
    logprobs: list[TokenChoice] = field(default_factory=list)  # reported entries, prompt ones first with echo
    text_offset: int = 0  # where the next reported token starts in ``text`` (completions' text_offset)
    started: bool = False
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens restored from the prefix-state cache
    stats: SpikeStats | None = None
    error: str | None = None
    held_events: list[GenerationEvent] = field(default_factory=list)  # whose text is held back (stop strings)
    held_entries: list[TokenChoice] = field(default_factory=list)  # their log-probability entries

    def absorb(self, events: list[GenerationEvent], wants_logprobs: bool) -> tuple[str, list[TokenChoice]]:
        """Take this sequence's next events; returns the new text and log-probability entries."""
        text, entries = "", []
        if not self.started:
            self.started = True
            text = self.echo or ""
        for event in events:
            if event.prompt_logprobs is not None:
                entries += [TokenChoice(self.prompt_ids[0]), *event.prompt_logprobs[1:]]
            text += event.text
            if wants_logprobs and event.token is not None:
                entries.append(event.token)
            self.completion_tokens = max(self.completion_tokens, event.completion_tokens)
            self.cached_tokens = event.cached_tokens
            if event.finish_reason is not None:
                self.finish_reason, self.stats, self.error = event.finish_reason, event.stats, event.error
        self.text += text
        self.logprobs += entries
        return text, entries

    def chunk_contents(
        self, events: list[GenerationEvent], entries: list[TokenChoice], text: str
    ) -> tuple[list[GenerationEvent], list[TokenChoice]] | None:
        """The events and log-probability entries that a stream chunk of ``text`` reports, or None while there is
        nothing to send: a token whose text is held back (a possible stop string, an incomplete character) makes
        no empty chunk; its entries and spikes ride on the next chunk that carries text, or on the last one."""
        self.held_events += events
        self.held_entries += entries
        if not text and self.finish_reason is None:
            return None
        contents = self.held_events, self.held_entries
        self.held_events, self.held_entries = [], []
        return contents


def token_spikes(events: list[GenerationEvent]) -> list[dict]:
    """A chunk's ``spikes`` (with ``stream_options.include_spikes``): for each token the chunk carries, the tokens
    the model read to produce it and the spikes at every site, in the model's site order."""
    return [{"tokens": e.spikes.tokens, "counts": e.spikes.counts} for e in events if e.spikes is not None]


class _Format:
    id_prefix: str
    object: str  # of a whole response
    chunk_object: str  # of a stream chunk

    def __init__(self, texts: TokenTexts):
        self.texts = texts


class CompletionFormat(_Format):
    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"

    def logprobs(self, choice: Choice, entries: list[TokenChoice]) -> dict:
        tokens = [self.texts(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(choice.text_offset)
            choice.text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                None if e.logprob is None else {self.texts(i): v for i, v in e.top_logprobs} for e in entries
            ],
            "text_offset": offsets,
        }

    def start_chunk(self, choice: Choice) -> dict | None:
        return None

    def chunk_choice(self, choice: Choice, text: str, entries: list[TokenChoice] | None, finish: str | None) -> dict:
        logprobs = self.logprobs(choice, entries) if entries is not None else None
        return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def final_choice(self, choice: Choice, wants_logprobs: bool) -> dict:
        logprobs = self.logprobs(choice, choice.logprobs) if wants_logprobs else None
        return {"index": choice.index, "text": choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}


class ChatFormat(_Format):
    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def _entry(self, token_id: int, logprob: float) -> dict:
        token = self.texts(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def logprobs(self, entries: list[TokenChoice]) -> dict:
        return {
            "content": [
                {**self._entry(e.token_id, e.logprob), "top_logprobs": [self._entry(i, v) for i, v in e.top_logprobs]}
                for e in entries
            ]
        }

    def start_chunk(self, choice: Choice) -> dict:
        delta = {"role": "assistant"}  # no empty content: the text comes in the chunks that follow
        return {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}

    def chunk_choice(self, choice: Choice, text: str, entries: list[TokenChoice] | None, finish: str | None) -> dict:
        delta = {"content": text} if text or finish is None else {}
        logprobs = self.logprobs(entries) if entries is not None else None
        return {"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def final_choice(self, choice: Choice, wants_logprobs: bool) -> dict:
        return {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "logprobs": self.logprobs(choice.logprobs) if wants_logprobs else None,
            "finish_reason": choice.finish_reason,
        }
