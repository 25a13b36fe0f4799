"""The web console at ``/console/``: static files and the policy they are served with.

Plain HTML, CSS and JavaScript modules from ``hub/server/web/`` (UI code only), on the
client SDK (``clients/js``) bundled with socket.io-client at
``/console/vendor/hub-client.js``. ``clients/js/build.mjs`` writes that file into
``hub/server/web/vendor/`` (``./dev setup`` in a checkout, the image's build stage).

Every response carries a strict Content-Security-Policy: scripts and styles from
this origin only (no inline code, no eval), connections to this origin only, no
plugins, no framing. The console renders user content as text, never as HTML; the
policy is the second line of defence.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

WEB = Path(__file__).parent / "web"
SDK = WEB / "vendor" / "hub-client.js"
FILES = {
    "": "index.html",
    "index.html": "index.html",
    "app.js": "app.js",
    "dom.js": "dom.js",
    "consultation.js": "consultation.js",
    "attachments.js": "attachments.js",
    "notify.js": "notify.js",
    "inbox.js": "inbox.js",
    "sw.js": "sw.js",
    "style.css": "style.css",
    "icon.svg": "icon.svg",
}
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_PLAIN_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def policy(public_url: str) -> str:
    """The console's Content-Security-Policy, from the hub's configured public URL
    only: never from a request header (a ``Host`` of ``x; report-uri ...`` would
    write directives of its own)."""
    # CSP3 lets 'self' cover ws/wss to this host; older engines need it spelled out.
    host = urlsplit(public_url).netloc
    sockets = f" ws://{host} wss://{host}" if _PLAIN_HOST.fullmatch(host) else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src 'self'{sockets}",
            "worker-src 'self'",  # sw.js, the service worker of notifications
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _headers(csp: str, path: Path) -> dict[str, str]:
    return {
        "Content-Type": f"{TYPES[path.suffix]}; charset=utf-8",
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def _load() -> dict[str, tuple[Path, bytes]]:
    """The console's files, read once when the app is built (a few tens of KB), so no
    request waits on the disk."""
    files = {route: (WEB / name, (WEB / name).read_bytes()) for route, name in FILES.items()}
    if SDK.is_file():
        files[f"vendor/{SDK.name}"] = (SDK, SDK.read_bytes())
    return files


def setup(app: web.Application, public_url: str) -> None:
    files = _load()
    csp = policy(public_url)

    async def serve(request: web.Request) -> web.StreamResponse:
        found = files.get(request.match_info.get("name", ""))
        if found is None:
            if request.match_info.get("name", "").startswith("vendor/"):
                raise web.HTTPNotFound(text="the client SDK is not built: run ./dev setup")
            raise web.HTTPNotFound()
        path, body = found
        return web.Response(body=body, headers=_headers(csp, path))

    app.router.add_get("/", to_console)
    app.router.add_get("/console", to_console)
    app.router.add_get("/favicon.ico", to_icon)
    app.router.add_get("/console/{name:[a-z.]*(/[a-z.-]+)?}", serve)


async def to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


async def to_icon(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/console/icon.svg")
