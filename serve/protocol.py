"""Request bodies of the OpenAI API (and the vLLM-style extras): THE validator of the server.

Every field is checked here, once, against ``spikegpt.runtime.sampling.LIMITS`` (the table the sampler and engine rely
on) and the served model's own limits (``ServerLimits``: vocabulary, prompt length, generation cap, capacity), so what
passes can be represented and run by the engine. Strictly: a wrong type is a 400, never coerced (``"5"`` is not a
number, ``1`` is not ``true``), except that a whole number written as a float (``1.0``) is an integer, as in JSON
Schema; ``null`` in an optional field means its default (the official OpenAI client sends ``temperature=None`` as
null). Unknown fields are ignored, as OpenAI clients send fields this server has no use for; fields that would
change the result but are not supported are refused.

The models' JSON schemas (the OpenAPI document's request bodies) state every rule checked here that JSON Schema can
say: the rules checked by validators with their own messages through ``states``, the rules between fields as
model-level ``anyOf``/``oneOf``, and the served model's limits through ``server_limit`` markers that the served
document fills in from its ``ServerLimits`` (``STATED_LIMITS``). So a request valid by the document is accepted,
except for what no schema can state: a text prompt's or a chat's length in tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spikegpt.runtime.sampling import LIMITS, MAX_N, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, SamplingParams, choice_seed

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


def states(**keywords: Any) -> Any:
    """JSON Schema keywords stating a rule that a validator here checks with its own message (pydantic's
    constraints would word the error otherwise), so that the document refuses what the server refuses."""
    return Field(json_schema_extra=keywords)


SERVER_LIMIT = "x-server-limit"  # the key of a marker in a JSON schema, replaced in the served document


def server_limit(name: str) -> Any:
    """Marks a JSON schema where the served document states limit ``name`` of ``STATED_LIMITS``."""
    return states(**{SERVER_LIMIT: name})


def _whole(value: object) -> object:
    # JSON Schema (and so the OpenAPI document) counts 1.0 as an integer: a whole float is taken as the int it
    # equals; 1.5, true and "1" still reach the strict int check and are refused
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_integer(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(_whole(value), int)


Integer = Annotated[int, BeforeValidator(_whole)]  # an int field's type: 1.0 is 1


def _float(name: str):
    return Annotated[float, Field(**LIMITS[name].constraints(), allow_inf_nan=False)]


def _int(name: str):
    # the range inside the conversion, where pydantic's JSON schema shows it as minimum and maximum
    return Annotated[int, Field(**LIMITS[name].constraints()), BeforeValidator(_whole)]


TokenId = _int("token_id")  # a stop token may be any id: one outside the vocabulary never matches
VocabularyId = Annotated[TokenId, server_limit("vocabulary")]  # below the served vocabulary's size
PromptIds = Annotated[list[VocabularyId], Field(min_length=1), server_limit("prompt_length")]
MaxTokens = Annotated[_int("max_tokens"), server_limit("max_tokens")]
ChatMaxTokens = Annotated[_int("chat_max_tokens"), server_limit("max_tokens")]
StopString = Annotated[str, states(minLength=1)]


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
    n: Annotated[_int("n"), server_limit("sequences")] | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    seed: _int("seed") | None = None
    ignore_eos: bool | None = False
    logit_bias: Annotated[
        dict[str, float] | None, refused("logit_bias is not supported by this server"), states(maxProperties=0)
    ] = None
    max_tokens: MaxTokens | None = None

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


def only_with(field: str, flag: str) -> dict:
    """JSON Schema: ``field`` is absent or null unless ``flag`` is true (a model validator's rule)."""
    flag_true = {"required": [flag], "properties": {flag: {"const": True}}}
    return {"anyOf": [flag_true, {"properties": {field: {"type": "null"}}}]}


def exactly_one_of(first: str, second: str) -> dict:
    """JSON Schema: exactly one of the two fields is given (present and not null)."""

    def alone(given: str, other: str) -> dict:
        return {"required": [given], "properties": {given: {"not": {"type": "null"}}, other: {"type": "null"}}}

    return {"oneOf": [alone(first, second), alone(second, first)]}


def _sequences_per_prompts(limits: ServerLimits) -> dict:
    """JSON Schema for ``n`` × prompts ≤ ``max_sequences``: for each n, a list of several prompts holds at most
    max_sequences // n (one branch per distinct bound, with the largest n that has it)."""
    largest_n = {limits.max_sequences // n: n for n in range(1, min(MAX_N, limits.max_sequences) + 1)}
    one_prompt = {"items": {"type": "integer"}}  # a string or one list of token ids: a list of prompts fails it
    return {
        "anyOf": [
            {"properties": {"n": {"maximum": n}, "prompt": {"anyOf": [one_prompt, {"maxItems": prompts}]}}}
            for prompts, n in largest_n.items()
        ]
    }


# What the served document states where a model marks a limit of the served model (``server_limit``): the keywords
# it adds there, from the server's ``ServerLimits``. A schema built without a loaded model drops the markers.
STATED_LIMITS: dict[str, Callable[[ServerLimits], dict]] = {
    "vocabulary": lambda limits: {"maximum": limits.vocab_size - 1},
    "prompt_length": lambda limits: {"maxItems": limits.max_prompt_tokens},
    # a text's length in tokens depends on the tokenizer (and a chat's on the template): JSON Schema cannot check it
    "text_length": lambda limits: {
        "description": f"at most {limits.max_prompt_tokens} tokens once tokenized (a chat: rendered by its template)"
    },
    "max_tokens": lambda limits: {"maximum": limits.max_tokens_cap},
    "sequences": lambda limits: {"maximum": min(MAX_N, limits.max_sequences)},
    "sequences_per_prompts": _sequences_per_prompts,
}


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
    model_config = ConfigDict(
        json_schema_extra={"allOf": [only_with("stream_options", "stream")], SERVER_LIMIT: "sequences_per_prompts"}
    )

    # a string, a list of token ids, or a list of either (several prompts); normalised to the last form
    prompt: Annotated[
        str | PromptIds | Annotated[list[str | PromptIds], Field(min_length=1)], server_limit("text_length")
    ]
    max_tokens: MaxTokens | None = 16  # OpenAI's default; 0 (legacy API): score the prompt, generate nothing
    echo: bool | None = False
    logprobs: _int("logprobs") | None = None
    best_of: Annotated[
        Integer | None,
        refused("best_of other than 1 is not supported by this server; use n", 1),
        states(minimum=0, maximum=1),
    ] = None
    suffix: Annotated[
        str | None,
        refused("suffix (insertion) is not supported by this model"),
        states(maxLength=0),
    ] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        def single(p) -> bool:
            return isinstance(p, str) or (isinstance(p, list) and bool(p) and all(_is_integer(t) for t in p))

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


MAX_COMPARED = 3  # models one compare request runs side by side


def _one_sequence(value: int) -> int:
    if value != 1:
        raise ValueError(f"a comparison runs one sequence per model: n must be 1, got {value}")
    return value


def _distinct(names: list[str]) -> list[str]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"each model once: {repeated[0]!r} is named twice")
    return names


class CompareRequest(_Generation):
    """``POST /v1/compare``: ``prompt`` on each of ``models`` (two or three served models), as a ``/v1/completions``
    request with the same sampling fields would run it on each; ``continuation``: a text each model is scored on
    after the prompt (bits per byte). ``model`` is ignored: ``models`` names them."""

    model_config = ConfigDict(json_schema_extra={"allOf": [only_with("stream_options", "stream")]})

    models: Annotated[
        list[str], Field(min_length=2, max_length=MAX_COMPARED), AfterValidator(_distinct), states(uniqueItems=True)
    ]
    prompt: Annotated[str, server_limit("text_length")]
    continuation: Annotated[str, states(minLength=1)] | None = None
    max_tokens: MaxTokens | None = 16
    n: Annotated[Integer, AfterValidator(_one_sequence), states(minimum=1, maximum=1)] | None = 1

    @field_validator("continuation")
    @classmethod
    def _continuation(cls, value):
        if value is not None and not value:
            raise ValueError("the continuation must not be empty (leave it out to score nothing)")
        return value

    def completion_body(self, model: str, stream: bool) -> bytes:
        """The ``/v1/completions`` body that runs this comparison on ``model``: its sampling fields, and the text
        and spikes of every token (what the /compare page draws)."""
        fields = self.model_dump(exclude={"models", "continuation", "model", "n", "stream", "stream_options"})
        body = {**fields, "model": model, "stream": stream, "logprobs": 0}
        if stream:
            body["stream_options"] = {"include_usage": True, "include_spikes": True}
        return json.dumps(body).encode()


def only_text(what: str) -> AfterValidator:
    """For a ``type`` field of which this server supports only "text"."""

    def check(value):
        if value != "text":
            raise ValueError(f"only 'text' {what} are supported, got {value!r}")
        return value

    return AfterValidator(check)


class TextPart(_Body):
    type: Annotated[str, only_text("content parts"), states(const="text")]
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
    type: Annotated[str, only_text("response formats"), states(const="text")]


class ChatCompletionRequest(_Generation):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [only_with("stream_options", "stream"), only_with("top_logprobs", "logprobs")]}
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1), server_limit("text_length")]
    max_tokens: ChatMaxTokens | None = None
    max_completion_tokens: ChatMaxTokens | None = None
    logprobs: bool | None = False
    top_logprobs: _int("logprobs") | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[
        list[dict] | None, refused("tools (function calling) are not supported by this model"), states(maxItems=0)
    ] = None

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
    model_config = ConfigDict(json_schema_extra=exactly_one_of("prompt", "messages"))

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
    tokens: list[VocabularyId]

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
