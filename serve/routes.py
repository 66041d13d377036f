"""The HTTP endpoints: OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``, vLLM's
``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` (which lm-evaluation-harness's remote tokenizer reads), and
``/health`` (liveness), ``/ready`` (readiness) and ``/metrics`` for operators."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from spikegpt.hub.tokenizer import CHAT_TEMPLATE, encode_counting_unknown

from .chat import render_chat
from .errors import APIError, ClientDisconnectedError, invalid, unsupported_media_type
from .formats import ChatFormat, CompletionFormat
from .generation import Generation, Job, Prompt, complete, stream
from .host import ModelHost, ModelHosts
from .lifecycle import RequestLife
from .openapi import (
    GENERATION_RESPONSES,
    HEALTH_RESPONSES,
    METRICS_RESPONSES,
    READY_RESPONSES,
    TOKENIZER_RESPONSES,
    errors,
    json_body,
)
from .protocol import (
    Body,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    check_prompt_ids,
    parse_body,
)

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _hosts(request: Request) -> ModelHosts:
    return request.app.state.hosts


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _json_object(raw: bytes) -> dict | None:
    """The body as a JSON object, to read its "model" before validation; None if it is none."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _read(request: Request, body_type: type[Body], life: RequestLife | None = None) -> tuple[ModelHost, Body]:
    """The ready host of the model the body names (with one model: that one) and the validated body, whose model
    (if named) must be a served one; ``life`` is the request's, counted from then on with that model. Only JSON
    bodies are parsed (415 otherwise); a client that leaves while sending raises ClientDisconnectedError."""
    hosts = _hosts(request)
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ClientDisconnectedError() from None
    data = _json_object(raw) if hosts.several else None  # (one model serves every request: no need to look)
    host = hosts.first if data is None else hosts.route(data.get("model"))  # a body no JSON object: refused below
    if life is not None:
        life.metrics = host.metrics
    host.require_ready()
    if not is_json(request.headers.get("content-type")):
        raise unsupported_media_type(request.headers.get("content-type"))
    body = parse_body(body_type, raw, host.limits)
    host.check_model(body.model)
    return host, body


def _host_status(host: ModelHost) -> dict:
    return {"status": host.status, **({"error": host.error} if host.error else {})}


def _status(hosts: ModelHosts, ok: bool) -> JSONResponse:
    """The server's status; with one model its name (and error), with several each model's status."""
    if hosts.several:
        body = {"status": hosts.status, "models": {host.model_name: _host_status(host) for host in hosts}}
    else:
        body = {"status": hosts.status, "model": hosts.first.model_name, **_host_status(hosts.first)}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/health", responses=HEALTH_RESPONSES)
async def health(request: Request) -> JSONResponse:
    """Liveness: 200 while the server is up, loading its models, serving or draining; 503 after a failed load."""
    hosts = _hosts(request)
    return _status(hosts, hosts.status != "failed")


@router.get("/ready", responses=READY_RESPONSES)
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when every model can serve; 503 while loading, after a failed load, and while draining
    after SIGTERM (so a load balancer stops sending requests before the server goes away)."""
    hosts = _hosts(request)
    return _status(hosts, hosts.status == "ready")


@router.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
async def metrics(request: Request) -> Response:
    data, content_type = _hosts(request).metrics.exposition()
    return Response(data, media_type=content_type)


def _model_card(host: ModelHost) -> dict:
    card = {"id": host.model_name, "object": "model", "created": host.created, "owned_by": "spikegpt"}
    if host.model is not None:
        card["spiking"] = host.spiking()
    return card


@router.get("/v1/models", responses=errors(401))
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(host) for host in _hosts(request)]}


@router.get("/v1/models/{model:path}", responses=errors(401, 404))
async def retrieve_model(request: Request, model: str) -> dict:
    return _model_card(_hosts(request).named(model))


def encode_prompt(host: ModelHost, prompt: str | list[int], echo: bool) -> Prompt:
    if isinstance(prompt, list):  # token ids: already checked with the body
        return Prompt(prompt, host.tokenizer.decode(prompt) if echo else None)
    ids, unknown = encode_counting_unknown(host.tokenizer, prompt)
    if not ids:  # an empty prompt starts a new document, as after an end-of-text token
        if host.tokenizer.eos_token_id is None:
            raise invalid("the prompt is empty and the model has no end-of-text token to start from", "prompt")
        ids = [host.tokenizer.eos_token_id]
    return Prompt(check_prompt_ids(ids, host.limits, "prompt"), prompt if echo else None, unknown)


async def completion_job(host: ModelHost, body: CompletionRequest, life: RequestLife) -> Job:
    max_tokens = host.settings.max_tokens_cap if body.max_tokens is None else body.max_tokens  # 0: score only
    prompts = [encode_prompt(host, p, body.echo) for p in body.prompt]
    params = [body.sampling_params(max_tokens, body.logprobs, c) for c in range(body.n)]
    return Job(
        host=host,
        fmt=CompletionFormat(host.token_texts),
        life=life,
        prompts=prompts,
        params_for_choice=params,
        logprobs=body.logprobs,
        include_usage=body.include_usage,
        prompt_logprobs=body.echo,
        include_spikes=body.include_spikes,
    )


async def _chat_job(host: ModelHost, body: ChatCompletionRequest, life: RequestLife) -> Job:
    max_tokens = body.requested_max_tokens or host.settings.max_tokens_cap
    chat = await render_chat(host.renderer, body.messages)
    ids, unknown = encode_counting_unknown(host.tokenizer, chat.text, add_special_tokens=False)
    check_prompt_ids(ids, host.limits, "messages")
    k = body.logprobs_k
    params = [body.sampling_params(max_tokens, k, c, chat.stop) for c in range(body.n)]
    return Job(
        host=host,
        fmt=ChatFormat(host.token_texts),
        life=life,
        prompts=[Prompt(ids, None, unknown)],
        params_for_choice=params,
        logprobs=k,
        include_usage=body.include_usage,
        include_spikes=body.include_spikes,
    )


async def _generate(request: Request, endpoint: str, body_type: type[Body], build: Callable) -> Response:
    hosts = _hosts(request)
    life = RequestLife(hosts.unrouted_metrics, endpoint)  # the model's, once the body names it
    try:
        host, body = await _read(request, body_type, life)
        job = await build(host, body, life)
        generation = Generation(job, request).open()
    except APIError as e:
        life.failed(e)
        raise
    except ClientDisconnectedError:
        life.cancelled("while sending its request")
        return Response(status_code=204)  # nobody is listening any more
    if body.stream:
        return StreamingResponse(stream(job, generation), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        result = await complete(job, generation)
    except APIError as e:
        life.failed(e)
        raise
    except ClientDisconnectedError:
        life.cancelled(f"while waiting for {job.id}")
        return Response(status_code=204)
    life.end("success")
    return JSONResponse(result)


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest), responses=GENERATION_RESPONSES)
async def completions(request: Request) -> Response:
    return await _generate(request, "completions", CompletionRequest, completion_job)


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest), responses=GENERATION_RESPONSES)
async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat/completions", ChatCompletionRequest, _chat_job)


@router.post("/tokenize", openapi_extra=json_body(TokenizeRequest), responses=TOKENIZER_RESPONSES)
async def tokenize(request: Request) -> dict:
    host, body = await _read(request, TokenizeRequest)
    if body.messages is not None:
        text, add_special_tokens = (await render_chat(host.renderer, body.messages)).text, False
    else:
        text, add_special_tokens = body.prompt, body.add_special_tokens
    ids, unknown = encode_counting_unknown(host.tokenizer, text, add_special_tokens)
    return {
        "tokens": ids,
        "count": len(ids),
        "max_model_len": host.settings.max_prompt_tokens,
        "unknown_characters": unknown,  # characters the vocabulary cannot spell, each one unknown token
    }


TOKENIZER_INFO_RESPONSES = {200: {"description": "special tokens and chat template"}, **errors(400, 401, 404, 503)}


@router.get("/tokenizer_info", responses=TOKENIZER_INFO_RESPONSES)
async def tokenizer_info(request: Request, model: str | None = None) -> dict:
    """The tokenizer's special tokens and chat template (vLLM's endpoint), so that clients such as
    lm-evaluation-harness tokenize through this server instead of looking for the tokenizer on the Hub; a server
    of several models needs ``?model=NAME``."""
    hosts = _hosts(request)
    host = hosts.route(model)
    host.check_model(model)
    host.require_ready()
    tokenizer = host.tokenizer
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "eos_token": tokenizer.eos_token,
        "bos_token": tokenizer.bos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
        "chat_template": tokenizer.chat_template or CHAT_TEMPLATE,
        "model_max_length": host.settings.max_prompt_tokens,
        "vocab_size": host.config.vocab_size,
    }


@router.post("/detokenize", openapi_extra=json_body(DetokenizeRequest), responses=TOKENIZER_RESPONSES)
async def detokenize(request: Request) -> dict:
    host, body = await _read(request, DetokenizeRequest)
    return {"prompt": host.tokenizer.decode(body.tokens)}
