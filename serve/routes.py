"""The HTTP endpoints: OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``, vLLM's
``/tokenize`` and ``/detokenize``, and ``/health`` (liveness), ``/ready`` (readiness) and ``/metrics`` for
operators."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .chat import render_chat
from .errors import APIError, invalid
from .formats import ChatFormat, CompletionFormat
from .generation import ClientDisconnectedError, Generation, Job, Prompt, complete, stream
from .host import ModelHost
from .protocol import Body, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, parse_body

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _host(request: Request) -> ModelHost:
    return request.app.state.host


async def _read(request: Request, body_type: type[Body]) -> tuple[ModelHost, Body]:
    """The ready host and the validated body, whose model (if named) must be the served one."""
    host = _host(request)
    host.require_ready()
    body = parse_body(body_type, await request.body())
    host.check_model(body.model)
    return host, body


def _status(host: ModelHost, ok: bool) -> JSONResponse:
    body = {"status": host.status, "model": host.model_name}
    if host.error:
        body["error"] = host.error
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness: 200 while the server is up, loading its model, serving or draining; 503 after a failed load."""
    host = _host(request)
    return _status(host, host.status != "failed")


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when requests can be served; 503 while loading, after a failed load, and while draining
    after SIGTERM (so a load balancer stops sending requests before the server goes away)."""
    host = _host(request)
    return _status(host, host.status == "ready")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = _host(request).metrics.exposition()
    return Response(data, media_type=content_type)


def _model_card(host: ModelHost) -> dict:
    return {"id": host.model_name, "object": "model", "created": host.created, "owned_by": "spikegpt"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(_host(request))]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict:
    host = _host(request)
    host.check_model(model)
    return _model_card(host)


def _check_length(host: ModelHost, ids: list[int], param: str) -> list[int]:
    limit = host.settings.max_prompt_tokens
    if len(ids) > limit:
        raise invalid(f"the prompt has {len(ids)} tokens; this server takes at most {limit}", param)
    return ids


def _check_token_ids(host: ModelHost, ids: list[int], param: str) -> None:
    vocab = host.config.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise invalid(f"token ids must be in [0, {vocab})", param)


def _max_tokens(host: ModelHost, requested: int | None, param: str) -> int:
    cap = host.settings.max_tokens_cap
    if requested is not None and requested > cap:
        raise invalid(f"{param} is {requested}; this server generates at most {cap} tokens per sequence", param)
    return requested or cap


def _encode_prompt(host: ModelHost, prompt: str | list[int], echo: bool) -> Prompt:
    if isinstance(prompt, list):
        _check_token_ids(host, prompt, "prompt")
        return Prompt(_check_length(host, prompt, "prompt"), host.tokenizer.decode(prompt) if echo else None)
    ids = host.tokenizer.encode(prompt)
    if not ids:  # an empty prompt starts a new document, as after an end-of-text token
        if host.tokenizer.eos_token_id is None:
            raise invalid("the prompt is empty and the model has no end-of-text token to start from", "prompt")
        ids = [host.tokenizer.eos_token_id]
    return Prompt(_check_length(host, ids, "prompt"), prompt if echo else None)


def _completion_job(host: ModelHost, body: CompletionRequest, arrival: float) -> Job:
    max_tokens = _max_tokens(host, body.max_tokens, "max_tokens")
    prompts = [_encode_prompt(host, p, body.echo) for p in body.prompt]
    params = [body.sampling_params(max_tokens, body.logprobs, c) for c in range(body.n)]
    fmt = CompletionFormat(host.token_texts)
    return Job(host, fmt, "completions", prompts, params, body.logprobs, body.include_usage, arrival, body.echo)


def _chat_job(host: ModelHost, body: ChatCompletionRequest, arrival: float) -> Job:
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = _max_tokens(host, body.requested_max_tokens, param)
    chat = render_chat(host.tokenizer, body.messages)
    ids = _check_length(host, host.tokenizer.encode(chat.text, add_special_tokens=chat.add_special_tokens), "messages")
    k = body.logprobs_k
    params = [body.sampling_params(max_tokens, k, c, chat.stop) for c in range(body.n)]
    fmt = ChatFormat(host.token_texts)
    return Job(host, fmt, "chat/completions", [Prompt(ids, None)], params, k, body.include_usage, arrival)


def _outcome(error: APIError) -> str:
    if error.status == 429:
        return "rejected"
    return "invalid" if error.status < 500 else "error"


async def _generate(request: Request, endpoint: str, body_type: type[Body], build: Callable) -> Response:
    arrival = time.monotonic()  # TTFT counts from here: reading, validation and tokenization included
    host = _host(request)
    try:
        host, body = await _read(request, body_type)
        body.check_stream_options()
        job = build(host, body, arrival)
        capacity = host.worker.capacity
        if len(job.requests) > capacity:
            raise invalid(f"the request asks for {len(job.requests)} sequences; this server holds at most {capacity}")
        generation = Generation(job, request).open()
    except APIError as e:
        host.metrics.request_done(endpoint, _outcome(e))
        raise
    if body.stream:
        return StreamingResponse(stream(job, generation), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        result = await complete(job, generation)
    except APIError as e:
        host.metrics.request_done(endpoint, _outcome(e))
        raise
    except ClientDisconnectedError:
        host.metrics.request_done(endpoint, "cancelled")
        return Response(status_code=204)  # nobody is listening any more
    host.metrics.request_done(endpoint, "success")
    return JSONResponse(result)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _generate(request, "completions", CompletionRequest, _completion_job)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat/completions", ChatCompletionRequest, _chat_job)


@router.post("/tokenize")
async def tokenize(request: Request) -> dict:
    host, body = await _read(request, TokenizeRequest)
    if (body.prompt is None) == (body.messages is None):
        raise invalid("give exactly one of prompt and messages")
    if body.messages is not None:
        chat = render_chat(host.tokenizer, body.messages)
        ids = host.tokenizer.encode(chat.text, add_special_tokens=chat.add_special_tokens)
    else:
        ids = host.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": host.settings.max_prompt_tokens}


@router.post("/detokenize")
async def detokenize(request: Request) -> dict:
    host, body = await _read(request, DetokenizeRequest)
    _check_token_ids(host, body.tokens, "tokens")
    return {"prompt": host.tokenizer.decode(body.tokens)}
