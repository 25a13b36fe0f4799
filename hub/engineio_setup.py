"""How the hub sets up python-engineio under Socket.IO.

Two adjustments, each applied to one server: WebSockets without permessage-deflate,
and a polling client's pending GET answered when its session ends. The bare
python-socketio peer of the benchmark (bench/peers/) applies the first too, for a
like-for-like measure of memory per connection.
"""

from __future__ import annotations

from typing import Any

import engineio
import engineio.async_drivers.aiohttp
import socketio
from aiohttp import web


class UncompressedWebSocket(engineio.async_drivers.aiohttp.WebSocket):  # type: ignore[misc]
    """engineio's aiohttp WebSocket, without permessage-deflate.

    Browsers and the Node client offer compression, and aiohttp accepts it by default:
    each connection then keeps a zlib compressor and decompressor, about 260 KiB in
    all, for messages of a few hundred bytes that barely compress. Measured with
    5,000 idle connections: see docs/performance.md.
    """

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size,
                                           compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


def websockets_without_compression(sio: socketio.AsyncServer) -> None:
    # A copy: the driver table is engineio's module-level dict, shared by every server.
    sio.eio._async = {**sio.eio._async, "websocket": UncompressedWebSocket}


def end_long_polls_on_disconnect(sio: socketio.AsyncServer) -> None:
    """Answer a polling client's pending GET when its session ends.

    When a polling client sends its CLOSE packet, engineio aborts the session without
    queueing anything, so the client's outstanding long-poll GET (and the server
    handler serving it) waits out the whole ping interval. A NOOP ends that poll now.
    """
    handle_disconnect = sio.eio.handlers["disconnect"]

    async def on_disconnect(eio_sid: str, reason: Any) -> None:
        try:
            await handle_disconnect(eio_sid, reason)
        finally:
            eio_socket = sio.eio.sockets.get(eio_sid)
            if eio_socket is not None and not eio_socket.upgraded:
                eio_socket.queue.put_nowait(engineio.packet.Packet(engineio.packet.NOOP))

    sio.eio.on("disconnect", on_disconnect)
