"""The demo page and the browser client, served from gateway/static/ with no build step.

`/` is the demo page; `/static/NAME` any file directly in the directory, with
an explicit content type (a module script must be served as JavaScript,
whatever the host's mimetypes say).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    # Stable names (no build step fingerprints them): browsers revalidate on
    # each use, and an unchanged file costs a 304, so a new release is seen at once.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# The demo talks to its own origin only; nothing inline, nothing from elsewhere.
_PAGE_HEADERS = {**_HEADERS, "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}


def add_routes(app: web.Application, directory: Path = STATIC_DIR) -> None:
    """GET / and GET /static/{name}. The files are listed once: a name not on the list is a 404."""
    files = {path.name: path for path in directory.iterdir() if path.is_file() and path.suffix in _TYPES}

    def respond(path: Path) -> web.FileResponse:  # FileResponse answers If-Modified-Since / ETag with 304
        headers = _PAGE_HEADERS if path.suffix == ".html" else _HEADERS
        return web.FileResponse(path, headers={**headers, "Content-Type": _TYPES[path.suffix]})

    async def index(request: web.Request) -> web.FileResponse:
        return respond(files["index.html"])

    async def static(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return respond(path)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
