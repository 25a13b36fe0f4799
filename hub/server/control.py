"""What every hub acts on at once: the control channel's messages, sent and handled.

A revocation ends the person's sockets on every hub; a clinic setting changed through
one hub is read afresh by all. The fact itself is stored before the message goes out
(channels/control.py says why), so a hub that missed the message still refuses a
revoked token once its copy of the cut-offs is read again (storage/revocations.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from channels.client import RedisClient
from channels.control import Changed, Control, ControlListener, publish_control
from handlers.base import Router
from handlers.services import Services
from hub.core.protocol import SessionEnd

log = logging.getLogger("hub.control")


class ControlBus:
    """This hub's end of the control channel: ``listener`` runs in the background
    (its liveness is part of readiness); ``publish`` reaches every hub, this one too."""

    def __init__(
        self, redis: RedisClient, channel: str, router: Router, tenants: Mapping[str, Services]
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._router = router
        self._tenants = tenants
        self.clinic_changed: Callable[[], Awaitable[None]] | None = None  # the registry's reload
        poll = min(1.0, router.services.settings.redis_timeout / 2)
        self.listener = ControlListener(redis, self.handle, channel, poll)

    async def publish(self, kind: Control, tenant: str, **fields: Any) -> None:
        await publish_control(self._redis, kind, tenant, self._channel, **fields)

    async def changed(self, services: Services, what: Changed, key: str | None = None) -> None:
        """Tell every hub that a clinic setting changed: each drops its cached copy."""
        await self.publish(Control.CHANGED, services.tenant, what=what, id=key)

    async def handle(self, kind: Control, tenant: str, fields: dict[str, Any]) -> None:
        if kind is Control.CLINIC:
            if self.clinic_changed is not None:
                await self.clinic_changed()
            return
        services = self._tenants.get(tenant)
        if services is None:
            return  # a clinic this hub does not serve
        if kind is Control.REVOKE and isinstance(fields.get("user_id"), str):
            revoked_at = fields.get("revoked_at")
            if isinstance(revoked_at, int | float):
                services.revocations.note(fields["user_id"], float(revoked_at))
            ended = self._router.sessions.end_person(tenant, fields["user_id"], SessionEnd.REVOKED)
            if ended:
                log.info("revocation: ended %d sockets of user=%s", ended, fields["user_id"])
        elif kind is Control.CHANGED:
            forget(services, Changed(str(fields.get("what"))), fields.get("id"))

    async def revoke(self, services: Services, user_id: str, actor_id: str) -> datetime:
        """End every session of ``user_id`` in ``services``' clinic, on every hub, and
        refuse their tokens issued until now. Stored and audited first; this hub's
        sockets end at once, the others' when the message reaches them (Unavailable if
        it cannot be sent: the caller tries again, the revocation already holds)."""
        revoked_at = await services.revocations.revoke(user_id, actor_id)
        await services.audit.record(actor_id, "sessions.revoked", user_id=user_id)
        self._router.sessions.end_person(services.tenant, user_id, SessionEnd.REVOKED)
        await self.publish(
            Control.REVOKE, services.tenant, user_id=user_id, revoked_at=revoked_at.timestamp()
        )
        log.info("sessions of user=%s revoked by=%s", user_id, actor_id)
        return revoked_at


def forget(services: Services, what: Changed, key: object) -> None:
    """Drop this hub's cached copy of a clinic setting that changed."""
    if what is Changed.PERSON and isinstance(key, str):
        services.directory.forget(key)
    elif what is Changed.POOL and isinstance(key, str):
        services.pools.forget(key)
    elif what is Changed.HOURS:
        services.clinic.forget()
    elif what is Changed.WEBHOOKS:
        services.webhooks.forget_subscriptions()
