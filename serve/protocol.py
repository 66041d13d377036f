"""Request bodies of the OpenAI API (and the vLLM-style extras), validated strictly: a wrong type is a 400, never
coerced (``"5"`` is not a number, ``1`` is not ``true``). Unknown fields are ignored, as OpenAI clients send
fields this server has no use for; fields that would change the result but are not supported are refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from spikegpt.errors import GenerationError
from spikegpt.sampling import MAX_TOP_LOGPROBS, SamplingParams

from .errors import invalid, validation_error

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 16  # choices per prompt


def refused(message: str, neutral: object = None) -> AfterValidator:
    """For a field this server does not support: accepted only when absent, empty or ``neutral``."""

    def check(value):
        if value and value != neutral:
            raise ValueError(message)
        return value

    return AfterValidator(check)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    """Fields both generation endpoints share."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # vLLM's extra; 0 or -1: off
    min_p: float = Field(0.0, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    logit_bias: Annotated[dict[str, float] | None, refused("logit_bias is not supported by this server")] = None
    max_tokens: int | None = Field(None, ge=1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, choice: int, extra_stop: tuple[str, ...] = ()
    ) -> SamplingParams:
        """The engine's parameters for choice ``choice`` (0 .. n-1); with a seed, choice i uses seed + i, so the n
        choices differ from each other but each is reproducible."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=max(self.top_k, 0),
                min_p=self.min_p,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                repetition_penalty=self.repetition_penalty,
                seed=None if self.seed is None else self.seed + choice,
                stop=stops + extra_stop,
                stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=self.ignore_eos,
                logprobs=logprobs,
            )
        except GenerationError as e:
            raise invalid(str(e), e.param) from e


class CompletionRequest(_Generation):
    prompt: Any = Field(...)
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; 0 (legacy API): score the prompt, generate nothing
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: Annotated[int | None, refused("best_of other than 1 is not supported by this server; use n", 1)] = None
    suffix: Annotated[str | None, refused("suffix (insertion) is not supported by this model")] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        """A string, a list of token ids, or a list of either (several prompts): normalised to a list."""

        def single(p) -> bool:
            return isinstance(p, str) or (
                isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            )

        if single(value):
            return [value]
        if isinstance(value, list) and value and all(single(p) for p in value):
            return value
        raise ValueError("must be a string, a non-empty list of token ids, or a non-empty list of either")


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
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict] | None, refused("tools (function calling) are not supported by this model")] = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs needs logprobs to be true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], body: bytes) -> Body:
    """Validate a JSON body; any problem is a 400 naming the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None
