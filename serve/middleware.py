"""ASGI middleware that acts before a request reaches a handler: the API key, and the request body's size limit and
time limit."""

from __future__ import annotations

import hashlib
import hmac

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")  # /health, /ready and /metrics stay open


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeyMiddleware:
    """With a key configured, the API paths need ``Authorization: Bearer <key>``; 401 otherwise. The key is
    compared in constant time (of equal-length digests, so not even its length leaks)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key_digest = _digest(api_key.encode())

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token.strip()), self._key_digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"  # CORS preflights carry no credentials
            and scope["path"].startswith(PROTECTED_PREFIXES)
            and not self._authorized(scope)
        ):
            error = APIError(
                401,
                "a valid API key is required: send it as 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", param=None, code="request_too_large")


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413: at once when Content-Length says so, else as soon as
    the body read so far passes the limit (the handler's read raises the error)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await body_too_large(self.limit).response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise body_too_large(self.limit)
            return message

        await self.app(scope, limited_receive, send)


def body_timed_out(timeout: float) -> APIError:
    return APIError(
        408,
        f"the request body stopped arriving: nothing came for {timeout:g} s",
        code="request_timeout",
        headers={"Connection": "close"},  # what is left of the body will never be read
    )


class BodyTimeoutMiddleware:
    """Drop a request whose body stops arriving: each wait for the next part of the body may last ``timeout``
    seconds, else the handler's read raises a 408 and the connection closes, so that a client sending half a body
    and waiting cannot hold a connection (nor a flood of them every connection). Once the body is complete, the
    app's later waits (for the client to leave, while a stream runs) are not limited."""

    def __init__(self, app: ASGIApp, timeout: float):
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_complete = False

        async def timed_receive() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                with anyio.fail_after(self.timeout):
                    message = await receive()
            except TimeoutError:
                raise body_timed_out(self.timeout) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
