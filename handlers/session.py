"""Connect, refresh and disconnect: authentication, revocation, the user room, presence."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import socketio

from handlers.base import Ack, Call, Router, join_room
from handlers.services import Services
from hub.core.auth import Principal, bearer_token
from hub.core.errors import Forbidden, HubError, Unauthorized
from hub.core.protocol import Empty, Event, Push, SessionRefresh, iso, ok

log = logging.getLogger("hub.session")


def register(router: Router) -> None:
    verifier, metrics = router.services.verifier, router.services.metrics
    sio = router.sio
    arrivals: dict[str, asyncio.Task[None]] = {}

    async def announce(services: Services, user_id: str, online: bool) -> None:
        contacts = await services.conversations.contacts_of(user_id)
        if contacts:
            await sio.emit(
                Push.PRESENCE,
                {
                    "user_id": user_id,
                    "name": await services.directory.name_of(user_id),
                    "online": online,
                },
                to=[services.rooms.user(c) for c in contacts],
            )

    @router.on(Event.SESSION_ME, Empty)
    async def me(call: Call, payload: Empty) -> Ack:
        """Who the hub takes this socket for: a client need not read its token (an
        identity provider's roles live in claims of its own)."""
        principal = call.connection.principal
        person = (await call.services.directory.people([principal.user_id]))[principal.user_id]
        # Not in the directory yet (its first connection is being recorded): the token's.
        known = person.get("role") is not None
        name = person["name"] if known else principal.name or principal.user_id
        return ok(
            user={"id": principal.user_id, "role": principal.role, "name": name},
            idle_timeout=call.services.settings.console_idle,
        )

    @router.on(Event.SESSION_REFRESH, SessionRefresh)
    async def refresh(call: Call, payload: SessionRefresh) -> Ack:
        """A new token for this socket's person, clinic and role: the session goes on
        until its ``exp``. Any other person, clinic or role is refused, and the socket
        keeps its current token."""
        current = call.connection.principal
        principal = await verifier.verify(payload.token)
        if (principal.tenant, principal.user_id) != (current.tenant, current.user_id):
            raise Forbidden("the token is for another person or clinic")
        if principal.role != current.role:
            raise Forbidden("the token is for another role: connect again with it")
        await check_not_revoked(call.services, principal)
        call.connection.principal = principal
        router.sessions.watch(call.connection)
        log.info("session refreshed user=%s sid=%s", principal.user_id, call.sid)
        return ok(expires_at=_iso_or_none(principal.expires_at))

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        token = token or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        try:
            principal = await verifier.verify(token)
            services = router.tenants.get(principal.tenant)
            if services is None:  # suspended or removed since the token was checked
                raise Unauthorized("invalid token: no such clinic on this hub")
            await check_not_revoked(services, principal)
        except HubError as exc:
            # Unauthorized, or Unavailable: the revocations could not be read, and a
            # session that might be revoked is not opened (the client tries again).
            metrics.connections.labels("refused").inc()
            log.info("connection refused: %s", exc.message)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code, "message": exc.message}
            ) from None
        router.sessions.watch(router.add(principal, sid))
        metrics.connections.labels("accepted").inc()
        await join_room(sio, sid, services.rooms.user(principal.user_id))
        log.info(
            "connected user=%s role=%s tenant=%s sid=%s",
            principal.user_id,
            principal.role,
            principal.tenant,
            sid,
        )
        arrival = router.tasks.spawn(_arrive(services, principal.user_id, sid))
        router.tasks.spawn(_seen(services, principal))
        arrivals[sid] = arrival
        # Kept only while it runs: the disconnect waits for it, and a finished one
        # would keep its task, coroutine and context alive as long as the socket.
        arrival.add_done_callback(lambda _: arrivals.pop(sid, None))

    async def _seen(services: Services, principal: Principal) -> None:
        try:
            await services.directory.seen(principal.user_id, principal.role, principal.name)
        except HubError:  # the store is away: the next connection records it
            log.warning("directory: could not record that user=%s connected", principal.user_id)

    async def _arrive(services: Services, user_id: str, sid: str) -> None:
        try:
            if await services.presence.arrive(user_id, sid):
                await announce(services, user_id, True)
        except HubError:
            log.warning("presence: could not record that user=%s arrived", user_id)

    @sio.on("disconnect")
    async def disconnect(sid: str, *reason: Any) -> None:
        connection = router.remove(sid)
        if connection is None:
            return
        log.info("disconnected user=%s sid=%s", connection.user_id, sid)
        services = router.tenants.get(connection.principal.tenant)
        if services is None:  # its clinic stopped: its presence expires with the keys
            return
        router.tasks.spawn(_leave(services, connection.user_id, sid, arrivals.pop(sid, None)))

    async def _leave(
        services: Services, user_id: str, sid: str, arrival: asyncio.Task[None] | None
    ) -> None:
        if arrival is not None:
            await asyncio.wait([arrival])  # never record the leave before the arrival
        try:
            if await services.presence.leave(user_id, sid):
                await announce(services, user_id, False)
        except HubError:
            log.warning("presence: could not record that user=%s left", user_id)


async def check_not_revoked(services: Services, principal: Principal) -> None:
    """Unauthorized if the clinic revoked this person's sessions after (or without)
    the token's ``iat``."""
    if await services.revocations.refuses(principal.user_id, principal.issued_at):
        raise Unauthorized("session revoked: sign in again")


def _iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso(datetime.fromtimestamp(timestamp, UTC))
