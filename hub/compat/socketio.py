"""python-socketio: what the hub changes in its server and managers, and why.

- Packets refused in the hub's words (``HubPacket``, given to the server as its
  ``serializer``, and ``refuse_malformed_frames``): a Socket.IO packet that does not
  decode, or names a reserved or non-string event, is answered ``bad_request`` when it
  carries an ack id; binary attachments that do not match their packet close the
  socket (engineio's state for it could never recover). Each refusal is counted and
  logged in one throttled line. Relies on python-socketio decoding in the Engine.IO
  ``message`` handler it registers, and raising ``ValueError`` for what it refuses.
- Local delivery without a task per recipient (``InlineLocalEmits``): replaces
  ``AsyncManager.emit`` for emits without a callback, and hands each packet to the
  socket's queue through the server's ``_send_eio_packet``.
"""

from __future__ import annotations

import logging
from typing import Any

import engineio.packet
import socketio
import socketio.packet

from hub.compat.engineio import websockets_without_compression
from hub.core.errors import BadRequest
from hub.core.logs import Throttle
from hub.core.metrics import Metrics

log = logging.getLogger("hub.frames")

UPSTREAM = {
    "socketio.packet:Packet.decode": "61ad7904b539f472",
    "socketio.packet:Packet.add_attachment": "01e024038f3d99f5",
    "socketio.async_server:AsyncServer._handle_eio_message": "bef50fc0e1635921",
    "socketio.async_server:AsyncServer._send_eio_packet": "64cf72a2ab7d75b1",
    "socketio.async_manager:AsyncManager.emit": "01ccd5b82b4f955e",
    "socketio.async_pubsub_manager:AsyncPubSubManager._thread": "fa8d075729aac64d",
}

# Names the Socket.IO clients keep for themselves; a client that sends one as an
# event must not reach the hub's own connect and disconnect handlers. ``*`` is
# python-socketio's key for the catch-all handler: an event of that name is handed to
# it without its name, and the catch-all's arguments no longer line up.
RESERVED_EVENTS = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        "*",
    }
)


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


class InlineLocalEmits(socketio.AsyncManager):
    """Local delivery that hands the packet to each recipient's queue in turn.

    python-socketio's ``AsyncManager.emit`` starts a task per recipient and waits for
    them all; handing a packet to engineio's queue never waits, so each task only adds
    a trip round the event loop before the socket's writer can send. Under load one trip
    cost 1-2 ms at p99 in the assistant benchmark. Emits with a callback (one ack id
    per recipient) are python-socketio's own.
    """

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None or namespace not in self.rooms:
            await super().emit(
                event,
                data,
                namespace,
                room=room,
                skip_sid=skip_sid,
                callback=callback,
                to=to,
                **kwargs,
            )
            return
        # What python-socketio sends: a tuple is several arguments, None is none.
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skipped = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            socketio.packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        packets = [
            engineio.packet.Packet(engineio.packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        for sid, eio_sid in list(self.get_participants(namespace, to or room)):
            if sid not in skipped:
                try:
                    for packet in packets:
                        await self.server._send_eio_packet(eio_sid, packet)
                except Exception:  # one broken socket must not cost the others theirs
                    log.exception("emit of %s to sid=%s failed", event, sid)
