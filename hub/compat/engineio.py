"""python-engineio: what the hub changes in its server and sockets, and why.

- WebSockets without permessage-deflate (``websockets_without_compression``; the bare
  python-socketio peer of the benchmark, ``bench/peers/``, applies it too, for a
  like-for-like measure of memory per connection). engineio's aiohttp driver offers
  no option for it: the driver's ``__call__`` is rewritten with ``compress=False``.
- WebSocket text frames that are no Engine.IO packet dropped and counted
  (``UncompressedWebSocket.wait``): engineio decodes them outside its error handling,
  and the connection would end with a traceback.
- Each socket's queue of outgoing packets bounded (``bound_outgoing_queues``): a
  client that stops reading (its TCP window full, engineio's writer waiting) is dropped
  once its queue holds more than the settings allow, instead of growing the hub's
  memory for as long as it answers pings. Relies on ``create_queue`` making every
  socket's queue, on ``send_packet`` being the one way packets are queued, and on the
  socket's ``close(abort=True)``.
- A polling client's pending GET answered when its session ends
  (``end_long_polls_on_disconnect``).
- Every socket closed on shutdown without waiting on clients that are gone
  (``close_sockets``): engineio's own ``disconnect()`` waits for each queue to drain.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import weakref
from collections.abc import Callable
from typing import Any

import engineio
import engineio.async_drivers.aiohttp
import socketio
from aiohttp import web

from hub.core.metrics import Metrics

log = logging.getLogger("hub.frames")

UPSTREAM = {
    "engineio.async_drivers.aiohttp:WebSocket.__call__": "71f9a94476d737c3",
    "engineio.async_drivers.aiohttp:WebSocket.wait": "992c370917677d39",
    "engineio.async_server:AsyncServer.create_queue": "5ff5673a0c017681",
    "engineio.async_server:AsyncServer.send_packet": "c54317440865030d",
    "engineio.async_server:AsyncServer._trigger_event": "4a09b6e47eb66532",
    "engineio.async_socket:AsyncSocket.close": "faa2e93902543244",
    "engineio.async_socket:AsyncSocket._websocket_handler": "27f120df4d717a24",
    "engineio.async_socket:AsyncSocket.handle_get_request": "05eaae9f0a60d9be",
}

_ENGINEIO_TYPES = frozenset("0123456")


class UncompressedWebSocket(engineio.async_drivers.aiohttp.WebSocket):
    """engineio's aiohttp WebSocket, without permessage-deflate, dropping text frames
    that are no Engine.IO packet (``refused`` is told of each).

    Browsers and the Node client offer compression, and aiohttp accepts it by default:
    each connection then keeps a zlib compressor and decompressor, about 260 KiB in
    all, for messages of a few hundred bytes that barely compress. Measured with
    5,000 idle connections: see docs/performance.md.
    """

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        await self._sock.prepare(request)
        # engineio hands its socket's reader as the handler; kept to end the transport
        # of a socket dropped while its writer waits on a client that does not read.
        eio_socket = getattr(self.handler, "__self__", None)
        if eio_socket is not None and request.transport is not None:
            _transports[eio_socket] = request.transport
        self.environ = environ
        await self.handler(self)
        return self._sock

    @staticmethod
    def refused(reason: str) -> None:
        """Told of each dropped frame; the hub's servers count and log them."""

    async def wait(self) -> str | bytes:
        while True:
            data: str | bytes = await super().wait()
            if isinstance(data, bytes) or _is_engineio_packet(data):
                return data
            # engineio decodes the frame outside its error handling: the connection
            # would end with a traceback.
            self.refused("not_engineio")


_transports: weakref.WeakKeyDictionary[Any, asyncio.Transport] = weakref.WeakKeyDictionary()


class MeteredQueue(asyncio.Queue[Any]):
    """A socket's queue of outgoing Engine.IO packets that knows how many bytes it
    holds (``_put`` and ``_get`` are asyncio's hooks for queue subclasses)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def _put(self, item: Any) -> None:
        self.bytes += _size(item)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= _size(item)
        return item


def _size(item: Any) -> int:
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, str | bytes) else 0


def bound_outgoing_queues(
    sio: socketio.AsyncServer, max_packets: int, max_bytes: int, metrics: Metrics
) -> None:
    """Drop a socket whose outgoing queue holds more than ``max_packets`` packets or
    ``max_bytes`` bytes, logged with the reason; the packet that would pass the bound
    is not queued. The device reconnects and ``sync`` gives it what it missed."""
    eio = sio.eio
    eio.create_queue = lambda *args, **kwargs: MeteredQueue()
    send_packet = eio.send_packet

    async def bounded_send_packet(eio_sid: str, pkt: Any) -> None:
        eio_socket = eio.sockets.get(eio_sid)
        queue = getattr(eio_socket, "queue", None)
        if isinstance(queue, MeteredQueue) and (
            queue.qsize() >= max_packets or queue.bytes + _size(pkt) > max_bytes
        ):
            if not (eio_socket.closed or eio_socket.closing):
                log.warning(
                    "dropped eio_sid=%s: %d packets (%d bytes) wait to be written "
                    "and its client does not read",
                    eio_sid,
                    queue.qsize(),
                    queue.bytes,
                    extra={"reason": "slow_consumer"},
                )
                metrics.dropped_sockets.labels("slow_consumer").inc()
                await _drop(eio_socket, queue)
            return
        await send_packet(eio_sid, pkt)

    eio.send_packet = bounded_send_packet


async def _drop(eio_socket: Any, queue: MeteredQueue) -> None:
    """End a socket whose writer is stuck: its disconnect handlers run (rooms,
    presence), its queue is emptied, and its connection is aborted."""
    await eio_socket.close(wait=False, abort=True)
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()
    transport = _transports.pop(eio_socket, None)
    if transport is not None:
        transport.abort()  # the writer's wait for the client ends; so does its reader
    else:
        queue.put_nowait(None)  # a polling socket: nothing is written to it again


def _is_engineio_packet(text: str) -> bool:
    if text[:1] in _ENGINEIO_TYPES:
        return True
    if text[:1] != "b":
        return False
    try:
        binascii.a2b_base64(text[1:], strict_mode=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        return False
    return True


def websockets_without_compression(
    sio: socketio.AsyncServer, refused: Callable[[str], None] | None = None
) -> None:
    websocket: type[UncompressedWebSocket] = UncompressedWebSocket
    if refused is not None:
        websocket = type(
            "HubWebSocket", (UncompressedWebSocket,), {"refused": staticmethod(refused)}
        )
    # A copy: the driver table is engineio's module-level dict, shared by every server.
    sio.eio._async = {**sio.eio._async, "websocket": websocket}


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


async def close_sockets(eio: Any, drain_seconds: float, *, reconnect: bool = False) -> None:
    """Close every Engine.IO socket, so that no long-poll request holds the shutdown.

    Each socket gets its close packet queued; the wait for the queues to drain is
    bounded by ``drain_seconds``, because a socket whose client already left never
    drains its queue (engineio's own ``disconnect()`` then waits forever). With
    ``reconnect``, no Engine.IO CLOSE packet is sent, only the transport ends: clients
    take a CLOSE as "the server sent me away" and stay disconnected, a lost transport
    as a reason to reconnect.
    """
    # A socket already closing (its client left) has nobody to drain its queue for.
    sockets = [s for s in eio.sockets.values() if not (s.closed or s.closing)]
    for eio_socket in sockets:
        await eio_socket.close(wait=False, abort=reconnect)
        if reconnect:
            eio_socket.queue.put_nowait(None)  # ends the transport's writer: it closes
    drains = [asyncio.ensure_future(s.queue.join()) for s in sockets]
    if drains:
        _, pending = await asyncio.wait(drains, timeout=drain_seconds)
        for drain in pending:
            drain.cancel()
    eio.sockets.clear()
