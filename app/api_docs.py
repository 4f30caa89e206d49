"""`/docs` (Swagger UI) and `/redoc` (ReDoc) served with their scripts and styles from this server, not a CDN, so
the API docs work on an air-gapped machine. The files come with the `fastapi-offline` package, which vendors them;
only those named here are served (no path from a request reaches the file system). ReDoc's script would still
fetch its sidebar logo from a CDN: that one address is pointed at the favicon served here."""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.errors import not_found

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/docs-assets"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
OPENAPI_URL = "/openapi.json"
TITLE = "gkd API"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL, title=f"{TITLE} (Swagger UI)",
        swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{PREFIX}/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{TITLE} (ReDoc)",
                          redoc_js_url=f"{PREFIX}/redoc.standalone.js", redoc_favicon_url=f"{PREFIX}/favicon.png",
                          with_google_fonts=False)


@functools.cache
def _redoc_script() -> bytes:
    """ReDoc's bundle with its one CDN address (the sidebar logo) pointed at the favicon served here."""
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO.encode(),
                                                                      f"{PREFIX}/favicon.png".encode())


@router.get(PREFIX + "/{name}")
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise not_found("docs asset", name)
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    if name == "redoc.standalone.js":
        return Response(_redoc_script(), media_type=media_type, headers=headers)
    return FileResponse(ASSETS_DIR / name, media_type=media_type, headers=headers)
