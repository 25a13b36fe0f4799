"""How the hub sets up python-socketio and python-engineio.

Adjustments, each applied to one server:

- WebSockets without permessage-deflate (the bare python-socketio peer of the
  benchmark, bench/peers/, applies this too, for a like-for-like measure of memory
  per connection);
- a polling client's pending GET answered when its session ends;
- frames the libraries cannot handle refused in the hub's words: a WebSocket text
  frame that is no Engine.IO packet is dropped (engineio would end the connection
  with a traceback), a Socket.IO packet that does not decode, or names a reserved or
  non-string event, is answered ``bad_request`` when it carries an ack id, and binary
  attachments that do not match their packet close the socket (engineio's state for
  it could never recover). Each refusal is counted and logged in one throttled line;
- each socket's queue of outgoing packets bounded: a client that stops reading (its
  TCP window full, engineio's writer waiting) is dropped once its queue holds more
  than the settings allow, instead of growing the hub's memory for as long as it
  answers pings.
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
import socketio.packet
from aiohttp import web

from hub.core.errors import BadRequest
from hub.core.logs import Throttle
from hub.core.metrics import Metrics

log = logging.getLogger("hub.frames")

# Names the Socket.IO clients keep for themselves; a client that sends one as an
# event must not reach the hub's own connect and disconnect handlers.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_ENGINEIO_TYPES = frozenset("0123456")


class MalformedFrame(ValueError):
    """A frame the hub refuses before any handler sees it.

    ``reason`` is a metric label from a fixed set; ``message`` goes to the client in a
    ``bad_request`` ack when ``ack_id`` is known; ``fatal`` closes the socket.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        ack_id: int | None = None,
        namespace: str | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.ack_id = ack_id
        self.namespace = namespace
        self.fatal = fatal


class HubPacket(socketio.packet.Packet):
    """python-socketio's packet, refusing what it cannot decode as :class:`MalformedFrame`
    (python-socketio's ``serializer`` option takes such a subclass)."""

    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments: int = super().decode(encoded_packet)
        except ValueError as exc:  # JSONDecodeError included
            if isinstance(exc, MalformedFrame):
                raise
            not_json = self.json is not None and isinstance(exc, self.json.JSONDecodeError)
            raise MalformedFrame(
                "not_json" if not_json else "malformed",
                "the payload is not valid JSON" if not_json else "malformed packet",
                ack_id=self.id if not_json and self._is_event() else None,
                namespace=self.namespace,
            ) from None
        except (TypeError, IndexError, RecursionError):
            raise MalformedFrame("malformed", "malformed packet") from None
        if self._is_event():
            self._check_event_name()
        return attachments

    def add_attachment(self, attachment: Any) -> bool:
        try:
            complete: bool = super().add_attachment(attachment)
        except (ValueError, TypeError, IndexError, KeyError, RecursionError):
            raise MalformedFrame(
                "binary", "binary attachments do not match their packet", fatal=True
            ) from None
        return complete

    def _is_event(self) -> bool:
        return self.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT)

    def _check_event_name(self) -> None:
        data = self.data
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise MalformedFrame(
                "event_name",
                "the event name must be a string",
                ack_id=self.id,
                namespace=self.namespace,
            )
        if data[0] in RESERVED_EVENTS:
            raise MalformedFrame(
                "event_name", f"unknown event {data[0]!r}", ack_id=self.id, namespace=self.namespace
            )


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


def refuse_malformed_frames(sio: socketio.AsyncServer, metrics: Metrics) -> None:
    """Answer, or close on, what :class:`HubPacket` and python-socketio refuse.

    Wraps the Engine.IO message handler that python-socketio registers. Installs the
    WebSocket driver too, so that frames engineio cannot decode are counted alike.
    """
    handle_message = sio.eio.handlers["message"]
    throttles: dict[str, Throttle] = {}

    def count(reason: str, sid: str | None) -> None:
        metrics.refused_frames.labels(reason).inc()
        throttle = throttles.setdefault(reason, Throttle())
        repeats = throttle.note()
        if repeats:
            log.warning(
                "refused a frame: %s (eio_sid=%s; %d since the last line)",
                reason,
                sid,
                repeats,
                extra={"reason": reason},
            )

    async def on_message(eio_sid: str, data: Any) -> None:
        try:
            await handle_message(eio_sid, data)
        except MalformedFrame as bad:
            await refuse(eio_sid, bad)
        except ValueError:
            # python-socketio's own refusals: an unknown packet type, a client-sent
            # CONNECT_ERROR, binary data before connecting.
            await refuse(eio_sid, MalformedFrame("unexpected_packet", "unexpected packet"))

    async def refuse(eio_sid: str, bad: MalformedFrame) -> None:
        count(bad.reason, eio_sid)
        namespace = bad.namespace or "/"
        if bad.ack_id is not None and sio.manager.sid_from_eio_sid(eio_sid, namespace):
            ack = sio.packet_class(
                socketio.packet.ACK,
                namespace=namespace,
                id=bad.ack_id,
                data=[BadRequest(bad.message).to_wire()],
            )
            await sio.eio.send(eio_sid, ack.encode())
        if bad.fatal:
            metrics.dropped_sockets.labels(bad.reason).inc()
            await sio.eio.disconnect(eio_sid)

    sio.eio.on("message", on_message)
    websockets_without_compression(sio, lambda reason: count(reason, None))


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
