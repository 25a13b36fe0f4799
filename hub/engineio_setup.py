"""How the hub sets up python-engineio under Socket.IO.

Three adjustments, each applied to one server: WebSockets without permessage-deflate;
each socket's writer waiting on its queue in its own task; and a polling client's
pending GET answered when its session ends. The bare python-socketio peer of the
benchmark (bench/peers/) applies the first too, for a like-for-like measure of memory
per connection.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import engineio
import engineio.async_drivers.aiohttp
import engineio.async_socket
import engineio.exceptions
import engineio.packet
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


class HubWebSocket(UncompressedWebSocket):
    """The hub's WebSocket: uncompressed, and its socket's writer waits on the queue in
    its own task (``poll`` below)."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        eio_socket = self.handler.__self__  # the handler is its socket's bound method
        eio_socket.poll = types.MethodType(poll, eio_socket)
        return await super().__call__(environ)


async def poll(self: engineio.async_socket.AsyncSocket) -> list[engineio.packet.Packet]:
    """engineio's ``AsyncSocket.poll``, waiting under ``asyncio.timeout`` instead of
    ``asyncio.wait_for``.

    On Python 3.11 ``wait_for`` runs ``queue.get()`` in a task of its own and wakes
    the writer through two callbacks: each packet took three trips round the event
    loop to reach the socket instead of one, each behind whatever else was ready to
    run (docs/performance.md, item 17). The rest is engineio's: the packets queued
    meanwhile go out with it, and ``None`` in the queue ends the writer.
    """
    try:
        async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
            packets = [await self.queue.get()]
        self.queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise engineio.exceptions.QueueEmpty() from None
    if packets == [None]:
        return []
    while True:
        try:
            pkt = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        self.queue.task_done()
        if pkt is None:
            self.queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


def websockets_without_compression(sio: socketio.AsyncServer) -> None:
    # A copy: the driver table is engineio's module-level dict, shared by every server.
    sio.eio._async = {**sio.eio._async, "websocket": UncompressedWebSocket}


def hub_websockets(sio: socketio.AsyncServer) -> None:
    """``HubWebSocket`` for the server's WebSockets (a copy of the table, as above)."""
    sio.eio._async = {**sio.eio._async, "websocket": HubWebSocket}


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
