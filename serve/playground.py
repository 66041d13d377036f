"""The playground: ``GET /`` serves one page, ``GET /compare`` the page that compares two or three models on one
prompt, and ``/playground/`` their scripts and style, from ``serve/static`` (package data; no build step, nothing
fetched from elsewhere, so it works offline). The pages talk to the server through the public API only:
``GET /v1/models``, the streaming endpoints with ``stream_options.include_spikes``, and ``POST /v1/compare``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# everything from this origin only: a page that works offline cannot depend on another, and must not leak to one
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


class _Static(StaticFiles):
    """The page's files, with the same headers as the page."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


def install_playground(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    @app.api_route("/compare", methods=["GET", "HEAD"], include_in_schema=False)
    async def compare() -> FileResponse:
        return FileResponse(STATIC / "compare.html", headers=HEADERS)

    app.mount("/playground", _Static(directory=STATIC), name="playground")
