"""Sessions that end: each socket's token expiry, and ending a person's sockets.

A socket's session lasts until its token's ``exp`` plus ``HUB_SESSION_GRACE``.
``HUB_SESSION_WARNING`` seconds before ``exp`` the socket gets ``session:expiring``;
a ``session:refresh`` with a new token of the same person and clinic moves both
moments to the new token's ``exp``. When the session ends, for expiry or revocation,
the socket gets ``session:ended {reason}`` and is then disconnected (Socket.IO's
server-side disconnect, after which the official clients do not reconnect on their
own). Timers are read on the hub's clock (hub.core.clock) when they are set.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hub.core import clock
from hub.core.protocol import Push, SessionEnd, iso

if TYPE_CHECKING:
    from handlers.base import Connection, Router

log = logging.getLogger("hub.session")


class SessionTimers:
    """The expiry timers of this process's sockets, and the one way they end."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._timers: dict[str, tuple[asyncio.TimerHandle, asyncio.TimerHandle]] = {}
        # Sockets told their session ended, until they are gone: a revocation heard
        # twice (this hub's own, then the control channel's echo of it) ends them once.
        self._ending: set[str] = set()

    def watch(self, connection: Connection) -> None:
        """(Re)start the timers of ``connection`` from its principal's ``exp``."""
        self._cancel(connection.sid)
        expires_at = connection.principal.expires_at
        if expires_at is None:
            return  # the hub's verifier requires exp; a principal without one never expires
        settings = self._router.services.settings
        left = expires_at - clock.timestamp()
        loop = asyncio.get_running_loop()
        sid = connection.sid
        self._timers[sid] = (
            loop.call_later(max(0.0, left - settings.session_warning), self._warn, sid),
            loop.call_later(
                max(0.0, left + settings.session_grace), self._end, sid, SessionEnd.EXPIRED
            ),
        )

    def forget(self, sid: str) -> None:
        """The socket is gone."""
        self._cancel(sid)
        self._ending.discard(sid)

    def _cancel(self, sid: str) -> None:
        for timer in self._timers.pop(sid, ()):
            timer.cancel()

    def end_person(self, tenant: str, user_id: str, reason: SessionEnd) -> int:
        """End every socket of this person on this process; returns how many."""
        sids = list(self._router.sids_of(tenant, user_id))
        for sid in sids:
            self._end(sid, reason)
        return len(sids)

    def end_clinic(self, tenant: str, reason: SessionEnd) -> int:
        """End every socket of clinic ``tenant`` on this process; returns how many."""
        sids = [sid for sid, c in self._router.connections.items() if c.principal.tenant == tenant]
        for sid in sids:
            self._end(sid, reason)
        return len(sids)

    def _warn(self, sid: str) -> None:
        connection = self._router.connections.get(sid)
        if connection is None or connection.principal.expires_at is None:
            return
        expires_at = iso(datetime.fromtimestamp(connection.principal.expires_at, UTC))
        self._router.tasks.spawn(
            self._router.sio.emit(
                Push.SESSION_EXPIRING, {"expires_at": expires_at}, to=sid, ignore_queue=True
            )
        )

    def _end(self, sid: str, reason: SessionEnd) -> None:
        connection = self._router.connections.get(sid)
        if connection is None or sid in self._ending:
            return
        self._cancel(sid)
        self._ending.add(sid)
        log.info("session ended user=%s sid=%s reason=%s", connection.user_id, sid, reason)
        self._router.services.metrics.sessions_ended.labels(reason).inc()
        self._router.tasks.spawn(self._close(sid, reason))

    async def _close(self, sid: str, reason: SessionEnd) -> None:
        sio = self._router.sio
        await sio.emit(Push.SESSION_ENDED, {"reason": reason}, to=sid, ignore_queue=True)
        await sio.disconnect(sid, ignore_queue=True)
