"""The web dashboard at ``/``: static assets shipped in the package, read by the browser.

The page is plain HTML, CSS and JavaScript of our own (no framework, nothing fetched from
outside: the machine may be offline). Everything it shows comes from the admin server's JSON
API, so the server side is only this: serve a fixed set of files with a Content-Security-Policy
that allows our own scripts and styles and nothing else.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web

from pilotfish.controller.control_plane import ControlPlane

ASSETS_PACKAGE = "pilotfish.admin"
ASSETS_FOLDER = "dashboard_assets"
ASSETS_PREFIX = "/dashboard/"

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

# No inline script or style, no eval, no other origin: even a string from the API that slipped
# into the markup could not run. The page only talks to the admin server that served it.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The assets change with the installed version; a stale app.js against a newer API breaks.
    "Cache-Control": "no-cache",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every asset by file name, with its content type; read once when the routes are made."""
    folder = resources.files(ASSETS_PACKAGE).joinpath(ASSETS_FOLDER)
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        content_type = CONTENT_TYPES.get(PurePosixPath(entry.name).suffix)
        if entry.is_file() and content_type is not None:
            assets[entry.name] = (entry.read_bytes(), content_type)
    return assets


def add_dashboard_routes(app: web.Application, control_plane: ControlPlane) -> None:
    assets = load_assets()

    def asset_response(name: str) -> web.Response:
        found = assets.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"no dashboard asset {name!r}\n")
        body, content_type = found
        charset = None if content_type == "image/svg+xml" else "utf-8"
        return web.Response(
            body=body, content_type=content_type, charset=charset, headers=SECURITY_HEADERS
        )

    async def index(_: web.Request) -> web.Response:
        return asset_response("index.html")

    async def asset(request: web.Request) -> web.Response:
        return asset_response(request.match_info["name"])

    app.router.add_get("/", index)
    app.router.add_get(ASSETS_PREFIX + "{name}", asset)
