"""The OpenAPI document (``/openapi.json``, ``/docs``): every request body, status and media type the server uses.

The generation routes read their bodies themselves (so that validation is strict and the errors are OpenAI's), so
FastAPI cannot see the bodies: each route declares its body with ``json_body`` and its statuses from ``ERRORS``,
and ``install_openapi`` puts the request models' JSON schemas (from the same pydantic models that validate) into
the document's components. Once the model is loaded, the document states the served model's limits too (its
vocabulary, prompt length, generation cap and capacity, marked in the models by ``server_limit``), so that every
request the document allows is one the server accepts.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .protocol import (
    SERVER_LIMIT,
    STATED_LIMITS,
    ChatCompletionRequest,
    CompareRequest,
    CompletionRequest,
    DetokenizeRequest,
    ServerLimits,
    TokenizeRequest,
)

REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest, CompareRequest)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, of every answer that is not a success."""

    error: ErrorDetail


ERRORS = {
    400: "the body is not valid JSON, or a field has a wrong type or a value out of range",
    401: "the API key is missing or wrong (only when the server has one)",
    404: "the model named is not one this server serves",
    413: "the body is larger than the server's --max-body-bytes",
    415: "the body is not sent as application/json",
    429: "every batch slot is taken and the queue is full (Retry-After: 1)",
    500: "the server failed to complete the request (the details are in its log)",
    503: "the model is still loading, failed to load, or the server is shutting down",
}


def errors(*statuses: int) -> dict:
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


def json_body(model: type[BaseModel]) -> dict:
    """A route's ``openapi_extra``: its JSON request body, validated by ``model``."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


GENERATION_RESPONSES = {
    200: {
        "description": "the whole answer (JSON), or with stream true a stream of server-sent events ending with "
        "'data: [DONE]'",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}},
    },
    **errors(400, 401, 404, 413, 415, 429, 500, 503),
}
TOKENIZER_RESPONSES = {200: {"description": "the result"}, **errors(400, 401, 404, 413, 415, 503)}
HEALTH_RESPONSES = {
    200: {"description": "live: loading the model, serving or draining"},
    503: {"description": "the model failed to load (with the error)", "content": {"application/json": {}}},
}
READY_RESPONSES = {
    200: {"description": "ready: requests can be served"},
    503: {"description": "loading, failed (with the error) or draining", "content": {"application/json": {}}},
}
METRICS_RESPONSES = {
    200: {"description": "Prometheus' text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


def state_limits(schema: object, limits: ServerLimits | None) -> None:
    """Replace, in place, each ``server_limit`` marker in a JSON schema with the keywords stating that limit;
    without ``limits`` (no model loaded yet) drop the markers."""
    if isinstance(schema, dict):
        name = schema.pop(SERVER_LIMIT, None)
        for value in schema.values():
            state_limits(value, limits)
        if name is not None and limits is not None:
            schema.update(STATED_LIMITS[name](limits))
    elif isinstance(schema, list):
        for value in schema:
            state_limits(value, limits)


def openapi_document(app: FastAPI, limits: ServerLimits | None) -> dict:
    """The OpenAPI document of ``app``'s routes, stating ``limits`` (those of the served model) where given."""
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    state_limits(schemas, limits)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the document of the server's current limits: none while the models load, then the served models'
    (with several, the least of each limit: what every model accepts)."""
    documents: dict[ServerLimits | None, dict] = {}

    def openapi() -> dict:
        limits = app.state.hosts.limits
        if limits not in documents:
            documents[limits] = openapi_document(app, limits)
        return documents[limits]

    app.openapi = openapi
