"""The FastAPI application, built by ``create_app``: also an app factory for any ASGI server, configured by
``SPIKEGPT_*`` environment variables (see ``settings``)::

    SPIKEGPT_MODEL=path/to/model uvicorn --factory spikegpt.serve.app:create_app --port 8000
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from spikegpt import __version__

from .compare import router as compare_router
from .errors import install_error_handlers
from .host import Loader, ModelHosts, load_checkpoint
from .middleware import ApiKeyMiddleware, BodySizeLimitMiddleware, BodyTimeoutMiddleware
from .openapi import install_openapi
from .playground import install_playground
from .routes import router
from .settings import ServeSettings


def create_app(
    settings: ServeSettings | None = None,
    loader: Loader = load_checkpoint,
    on_load_error: Callable[[Exception], None] | None = None,
) -> FastAPI:
    """The server's app. The models load in the background once the app starts (``/ready`` says when they are
    ready); ``loader`` replaces how each is loaded, ``on_load_error`` hears if that fails."""
    settings = settings or ServeSettings.from_env()
    hosts = ModelHosts(settings, loader, on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(hosts.load())
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await hosts.close()

    app = FastAPI(title="SpikeGPT", version=__version__, lifespan=lifespan)
    app.state.hosts = hosts
    app.state.host = hosts.first  # the first (with one model: the) served model
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(compare_router)
    install_openapi(app)
    install_playground(app)
    # the last added runs first: CORS (so that every answer carries its headers), then the key, then the body's limits
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.request_body_timeout)
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    return app
