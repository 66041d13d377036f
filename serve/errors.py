"""Errors as the OpenAI API shapes them: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Every failure a client can see goes through here, so no response ever carries a traceback, and validation errors
are 400 (as OpenAI and vLLM answer), not FastAPI's 422.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error to answer with: status, message, and the OpenAI body's type, param and code."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientDisconnectedError(Exception):
    """The client closed the connection before the response was complete."""


def unsupported_media_type(content_type: str | None) -> APIError:
    got = f"got {content_type!r}" if content_type else "got none"
    message = f"the request body must be JSON, sent with 'Content-Type: application/json' ({got})"
    return APIError(415, message, code="unsupported_media_type")


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def server_error(message: str = "the server failed to complete the request; see its log") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="service_unavailable", code="server_shutdown")


# names pydantic puts in an error's location for the branch of a union it tried, not for a field
_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance", "function-after"}


def _pydantic_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and "[" not in part and part not in _UNION_BRANCHES:
            out += f".{part}" if out else part
    return out


def validation_error(errors: list[dict]) -> APIError:
    """One of pydantic's errors, as a 400 naming the field: the deepest, which for a union is the branch that got
    furthest (a list of content parts with a bad part, rather than "not a string")."""
    first = max(errors, key=lambda e: len(e["loc"]))
    param = _pydantic_location(first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {message}", code="invalid_json")
    return invalid(f"{param}: {message}" if param else message, param)


_STATUS_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return APIError(exc.status_code, message, type=kind, headers=exc.headers).response()

    @app.exception_handler(ClientDisconnectedError)
    async def client_left(request: Request, exc: ClientDisconnectedError) -> Response:
        logger.info("%s %s cancelled: the client left while sending its request", request.method, request.url.path)
        return Response(status_code=204)  # nobody is listening any more

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return server_error().response()
