"""The floor under every Python peer: an aiohttp WebSocket and nothing else.

No Engine.IO, no Socket.IO, no compression: it accepts WebSockets on ``/ws`` and reads
them until they close. It serves only the connections scenario, to show what aiohttp
itself holds per idle connection.

    python bench/peers/aiohttp_ws.py <port>
"""

from __future__ import annotations

import sys

from aiohttp import web


async def websocket(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(compress=False)
    await socket.prepare(request)
    async for _ in socket:
        pass
    return socket


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", websocket)
    app.router.add_get("/health", health)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8093
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
