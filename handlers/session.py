"""Connect and disconnect: authentication, the user room, presence."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio

from handlers.base import Ack, Call, Router
from handlers.services import Services
from hub.core.auth import bearer_token
from hub.core.errors import HubError, Unauthorized
from hub.core.protocol import Empty, Event, Push, ok

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
        return ok(user={"id": principal.user_id, "role": principal.role, "name": name})

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        token = token or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        try:
            principal = await verifier.verify(token)
        except Unauthorized as exc:
            metrics.connections.labels("refused").inc()
            log.info("connection refused: %s", exc.message)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code, "message": exc.message}
            ) from None
        services = router.tenants[principal.tenant]
        router.add(principal, sid)
        metrics.connections.labels("accepted").inc()
        await sio.enter_room(sid, services.rooms.user(principal.user_id))
        log.info(
            "connected user=%s role=%s tenant=%s sid=%s",
            principal.user_id,
            principal.role,
            principal.tenant,
            sid,
        )
        arrival = router.tasks.spawn(_arrive(services, principal.user_id, sid))
        router.tasks.spawn(
            services.directory.seen(principal.user_id, principal.role, principal.name)
        )
        arrivals[sid] = arrival
        # Kept only while it runs: the disconnect waits for it, and a finished one
        # would keep its task, coroutine and context alive as long as the socket.
        arrival.add_done_callback(lambda _: arrivals.pop(sid, None))

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
        services = router.tenants[connection.principal.tenant]
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
