"""The router: the one wrapper every Socket.IO event goes through.

It looks up the authenticated connection, applies the rate limits, parses the
payload against its schema, calls the handler, and turns any failure into the
protocol's ``{ok: false, error}`` ack. A failing handler never disconnects the
client and never sends a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import socketio

from handlers.expiry import SessionTimers
from handlers.services import Services
from hub.core import logs
from hub.core.auth import Principal
from hub.core.errors import (
    BadRequest,
    InternalError,
    RateLimited,
    Unauthorized,
    Unavailable,
    to_hub_error,
)
from hub.core.logs import Throttle
from hub.core.protocol import Payload, parse
from hub.core.ratelimit import TokenBucket
from hub.core.tasks import TaskGroup
from hub.core.tenants import DEFAULT_TENANT

log = logging.getLogger("hub.events")

P = TypeVar("P", bound=Payload)
UNKNOWN_EVENT = "(unknown)"  # the metrics label and log name of events without a handler
Ack = dict[str, Any]


@dataclass(slots=True)
class Connection:
    """One authenticated socket of this process."""

    sid: str
    principal: Principal
    bucket: TokenBucket
    connected_at: float = field(default_factory=time.monotonic)
    limited: Throttle = field(default_factory=Throttle)  # its rate-limited events, logged

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def role(self) -> str:
        return self.principal.role

    @property
    def person(self) -> tuple[str, str]:
        """Who is connected, in full: the same user id in two clinics is two people."""
        return self.principal.tenant, self.principal.user_id


@dataclass(slots=True)
class Call:
    """What a handler gets besides its payload: the services of its person's clinic."""

    services: Services
    connection: Connection

    @property
    def sid(self) -> str:
        return self.connection.sid

    @property
    def user_id(self) -> str:
        return self.connection.user_id

    async def emit_to_users(
        self, event: str, data: dict[str, Any], user_ids: Any, *, skip_self: bool = True
    ) -> None:
        """Emit to every device of these users (across hub processes), not to this socket."""
        rooms = [self.services.rooms.user(u) for u in user_ids]
        if rooms:
            await self.services.sio.emit(
                event, data, to=rooms, skip_sid=self.sid if skip_self else None
            )


Handler = Callable[[Call, P], Awaitable[Ack]]


class Router:
    """Registers handlers on the server and keeps this process's connections.

    ``tenants`` holds each clinic's services; a handler gets those of its socket's
    clinic, which the token's provider decided. ``services`` (the ``default`` clinic's)
    serves what is the hub's alone: the Socket.IO server, metrics, rate limits.
    """

    def __init__(self, tenants: Mapping[str, Services]) -> None:
        self.tenants = tenants
        self.services = tenants[DEFAULT_TENANT]
        self.sio: socketio.AsyncServer = self.services.sio
        self.connections: dict[str, Connection] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._sids_by_user: dict[tuple[str, str], set[str]] = {}
        self._user_buckets: dict[tuple[str, str], TokenBucket] = {}
        self.tasks = TaskGroup("events")
        self.draining = False  # set at shutdown: new events are refused
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.sio.on("*", self._unknown_event)
        self.sessions = SessionTimers(self)

    def add(self, principal: Principal, sid: str) -> Connection:
        connection = Connection(sid, principal, TokenBucket(self.services.settings.rate_conn))
        self.connections[sid] = connection
        self._empty.clear()
        self._sids_by_user.setdefault(connection.person, set()).add(sid)
        self._count()
        return connection

    def sids_of(self, tenant: str, user_id: str) -> frozenset[str]:
        """This process's sockets of one person."""
        return frozenset(self._sids_by_user.get((tenant, user_id), ()))

    def remove(self, sid: str) -> Connection | None:
        self.sessions.forget(sid)
        connection = self.connections.pop(sid, None)
        if connection is not None:
            sids = self._sids_by_user.get(connection.person, set())
            sids.discard(sid)
            if not sids:
                self._sids_by_user.pop(connection.person, None)
                self._user_buckets.pop(connection.person, None)
        if not self.connections:
            self._empty.set()
        self._count()
        return connection

    def _count(self) -> None:
        self.services.metrics.sockets.set(len(self.connections))
        self.services.metrics.users.set(len(self._sids_by_user))

    async def drain(self, timeout: float) -> bool:
        """Refuse new events from now on and wait up to ``timeout`` seconds for the ones
        being handled to ack; True if none is left."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_until_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every connection to end; True if they did."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def on(self, event: str, schema: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        def decorate(handler: Handler[P]) -> Handler[P]:
            async def dispatch(sid: str, *args: Any) -> Ack:
                return await self._dispatch(event, schema, handler, sid, args)

            self.sio.on(event, dispatch)
            return handler

        return decorate

    async def _dispatch(
        self,
        event: str,
        schema: type[P] | None,
        handler: Handler[P],
        sid: str,
        args: tuple[Any, ...],
    ) -> Ack:
        """Handle one event; logs one line for it, with its request id, and counts it.

        A rate-limited event is not logged on its own: the connection's refusals are
        logged once per interval, with their count. ``schema`` None: no payload is
        parsed (the handler refuses the event whatever it carries).
        """
        started = time.perf_counter()
        token = logs.request_id.set(uuid.uuid4().hex[:16])
        connection = self.connections.get(sid)
        outcome = "ok"
        try:
            if connection is None:
                raise Unauthorized("not connected")
            if self.draining:
                raise Unavailable("this hub is shutting down: reconnect and send again")
            if not self._allow(connection):
                raise RateLimited()
            if len(args) > 1:
                raise BadRequest("send one payload object")
            payload: Any = None if schema is None else parse(schema, args[0] if args else None)
            self.in_flight += 1
            self._idle.clear()
            try:
                services = self.tenants.get(connection.principal.tenant)
                if services is None:  # the clinic was suspended: its sockets are ending
                    raise Unauthorized("this clinic is not served")
                return await handler(Call(services, connection), payload)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()
        except Exception as exc:
            error = to_hub_error(exc)
            outcome = error.code
            if isinstance(error, InternalError):
                # The traceback without the exception's text: that text may quote user content.
                frames = "".join(traceback.format_tb(exc.__traceback__))
                log.error("event %s failed: %s\n%s", event, type(exc).__name__, frames)
            return error.to_wire()
        finally:
            elapsed = time.perf_counter() - started
            metrics = self.services.metrics
            metrics.events.labels(event, outcome).inc()
            metrics.ack_seconds.labels(event).observe(elapsed)
            user_id = connection.user_id if connection else None
            if outcome == RateLimited.code and connection is not None:
                self._log_limited(connection)
            else:
                log.info(
                    "event %s %s user=%s sid=%s ms=%.1f",
                    event,
                    outcome,
                    user_id,
                    sid,
                    elapsed * 1000,
                    extra={
                        "event": event,
                        "outcome": outcome,
                        "sid": sid,
                        "user_id": user_id,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            logs.request_id.reset(token)

    @staticmethod
    def _log_limited(connection: Connection) -> None:
        refused = connection.limited.note()
        if refused:
            log.warning(
                "rate limited user=%s sid=%s: %d events refused since the last line",
                connection.user_id,
                connection.sid,
                refused,
                extra={
                    "outcome": RateLimited.code,
                    "sid": connection.sid,
                    "user_id": connection.user_id,
                    "refused": refused,
                },
            )

    def _allow(self, connection: Connection) -> bool:
        if not connection.bucket.take():
            return False
        bucket = self._user_buckets.get(connection.person)
        if bucket is None:
            bucket = TokenBucket(self.services.settings.rate_user)
            self._user_buckets[connection.person] = bucket
        return bucket.take()

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> Ack:
        """Any event without a handler: refused, but rate limited and counted like the
        others (a client could otherwise flood the hub with made-up names)."""
        name = event[:64]

        async def refuse(call: Call, payload: Any) -> Ack:
            raise BadRequest(f"unknown event {name!r}")

        return await self._dispatch(UNKNOWN_EVENT, None, refuse, sid, args[:1])


async def join_room(sio: socketio.AsyncServer, sid: str, room: str) -> None:
    """Put a socket in a room, and return once this hub hears what is published to
    the room from any hub (``FanoutManager.room_ready``): what was stored before is
    the device's ``sync`` or history, what comes after reaches it live."""
    await sio.enter_room(sid, room)
    ready = getattr(sio.manager, "room_ready", None)
    if ready is not None:
        await ready(room)
