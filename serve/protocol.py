"""Request bodies of the OpenAI API (and the vLLM-style extras): THE validator of the server.

Every field is checked here, once, against ``spikegpt.runtime.sampling.LIMITS`` (the table the sampler and engine rely
on) and the served model's own limits (``ServerLimits``: vocabulary, prompt length, generation cap, capacity), so what
passes can be represented and run by the engine. Strictly: a wrong type is a 400, never coerced (``"5"`` is not a
number, ``1`` is not ``true``); ``null`` in an optional field means its default (the official OpenAI client sends
``temperature=None`` as null). Unknown fields are ignored, as OpenAI clients send fields this server has no use
for; fields that would change the result but are not supported are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spikegpt.runtime.sampling import LIMITS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, SamplingParams, choice_seed

from .errors import invalid, validation_error


@dataclass(frozen=True)
class ServerLimits:
    """What the served model and the server's settings allow, beyond ``LIMITS``."""

    vocab_size: int
    max_prompt_tokens: int
    max_tokens_cap: int
    max_sequences: int  # sequences one request may ask for: the server's capacity (--max-batch + --max-queue)


def _limits(info: ValidationInfo) -> ServerLimits:
    return info.context["limits"]


def _float(name: str):
    return Annotated[float, Field(**LIMITS[name].constraints(), allow_inf_nan=False)]


def _int(name: str):
    return Annotated[int, Field(**LIMITS[name].constraints())]


TokenId = _int("token_id")
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


def refused(message: str, neutral: object = None) -> AfterValidator:
    """For a field this server does not support: accepted only when absent, empty or ``neutral``."""

    def check(value):
        if value and value != neutral:
            raise ValueError(message)
        return value

    return AfterValidator(check)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data):
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}
        return data


class StreamOptions(_Body):
    include_usage: bool | None = False
    include_spikes: bool | None = False  # each chunk's choice carries its tokens' spike counts per site


class _Generation(_Body):
    """Fields both generation endpoints share."""

    model: str | None = None
    temperature: _float("temperature") | None = 1.0
    top_p: _float("top_p") | None = 1.0
    top_k: _int("top_k") | None = 0  # vLLM's extra; 0 or -1: off
    min_p: _float("min_p") | None = 0.0
    presence_penalty: _float("presence_penalty") | None = 0.0
    frequency_penalty: _float("frequency_penalty") | None = 0.0
    repetition_penalty: _float("repetition_penalty") | None = 1.0
    n: _int("n") | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    seed: _int("seed") | None = None
    ignore_eos: bool | None = False
    logit_bias: Annotated[dict[str, float] | None, refused("logit_bias is not supported by this server")] = None
    max_tokens: _int("max_tokens") | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_count(cls, value):
        # before the type check, so that too many stops get this message rather than the union's "a valid string"
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences, got {len(value)}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("max_tokens", "max_completion_tokens", check_fields=False)  # chat's is its alias
    @classmethod
    def _max_tokens(cls, value, info: ValidationInfo):
        cap = _limits(info).max_tokens_cap
        if value is not None and value > cap:
            raise ValueError(f"this server generates at most {cap} tokens per sequence, got {value}")
        return value

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def include_spikes(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_spikes)

    def check_sequences(self, prompts: int, info: ValidationInfo) -> None:
        capacity = _limits(info).max_sequences
        if prompts * self.n > capacity:
            raise invalid(f"the request asks for {prompts * self.n} sequences; this server holds at most {capacity}")

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, choice: int, extra_stop: tuple[str, ...] = ()
    ) -> SamplingParams:
        """The engine's parameters for choice ``choice`` (0 .. n-1); with a seed, choice i uses seed + i, so the n
        choices differ from each other but each is reproducible."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            seed=None if self.seed is None else choice_seed(self.seed, choice),
            stop=stops + extra_stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


def _prompt_problem(ids: list[int], limits: ServerLimits) -> str | None:
    if len(ids) > limits.max_prompt_tokens:
        return f"the prompt has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}"
    if any(t >= limits.vocab_size for t in ids):
        return f"token ids must be in [0, {limits.vocab_size})"
    return None


def check_prompt_ids(ids: list[int], limits: ServerLimits, param: str) -> list[int]:
    """A prompt's token ids once tokenized (or as sent): within the server's prompt length and the vocabulary."""
    problem = _prompt_problem(ids, limits)
    if problem is not None:
        raise invalid(f"{param}: {problem}", param)
    return ids


class CompletionRequest(_Generation):
    # a string, a list of token ids, or a list of either (several prompts); normalised to the last form
    prompt: str | TokenIds | Annotated[list[str | TokenIds], Field(min_length=1)]
    max_tokens: _int("max_tokens") | None = 16  # OpenAI's default; 0 (legacy API): score the prompt, generate nothing
    echo: bool | None = False
    logprobs: _int("logprobs") | None = None
    best_of: Annotated[int | None, refused("best_of other than 1 is not supported by this server; use n", 1)] = None
    suffix: Annotated[str | None, refused("suffix (insertion) is not supported by this model")] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        def single(p) -> bool:
            return isinstance(p, str) or (
                isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            )

        if single(value):
            return [value]
        if isinstance(value, list) and value and all(single(p) for p in value):
            return value
        raise ValueError("must be a string, a non-empty list of token ids, or a non-empty list of either")

    @field_validator("prompt")
    @classmethod
    def _token_prompts(cls, value, info: ValidationInfo):
        limits = _limits(info)
        for p in value:
            problem = _prompt_problem(p, limits) if isinstance(p, list) else None
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _sequences(self, info: ValidationInfo):
        self.check_sequences(len(self.prompt), info)
        return self


def only_text(what: str) -> AfterValidator:
    """For a ``type`` field of which this server supports only "text"."""

    def check(value):
        if value != "text":
            raise ValueError(f"only 'text' {what} are supported, got {value!r}")
        return value

    return AfterValidator(check)


class TextPart(_Body):
    type: Annotated[str, only_text("content parts")]
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class ResponseFormat(_Body):
    type: Annotated[str, only_text("response formats")]


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: _int("chat_max_tokens") | None = None
    max_completion_tokens: _int("chat_max_tokens") | None = None
    logprobs: bool | None = False
    top_logprobs: _int("logprobs") | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict] | None, refused("tools (function calling) are not supported by this model")] = None

    @model_validator(mode="after")
    def _logprobs_and_sequences(self, info: ValidationInfo):
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs needs logprobs to be true", "top_logprobs")
        self.check_sequences(1, info)
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise invalid("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[TokenId]

    @field_validator("tokens")
    @classmethod
    def _in_vocabulary(cls, value, info: ValidationInfo):
        vocab_size = _limits(info).vocab_size
        if any(t >= vocab_size for t in value):
            raise ValueError(f"token ids must be in [0, {vocab_size})")
        return value


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], body: bytes, limits: ServerLimits) -> Body:
    """Validate a JSON body against ``LIMITS`` and ``limits``; any problem is a 400 naming the field."""
    try:
        return model.model_validate_json(body, context={"limits": limits})
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None
