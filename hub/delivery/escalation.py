"""The response-time promise: a patient left waiting is escalated.

A pool promises an answer within ``response_minutes`` of business hours (the clinic's
office hours; all hours if none are set). A pool conversation whose patient has
waited that long is escalated to the pool's lead, and at twice that long to the
clinic's admins: each gets a notification (``notification:new``, type
``inbox.escalated``) naming the conversation and the pool, never the message. Each
level happens once per waiting period, on one hub (a conditional update on the
level); an answer from the clinic ends the period.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import socketio

from hub.core import clock
from hub.core.office_hours import open_seconds
from hub.core.protocol import Push
from hub.core.rooms import DEFAULT_ROOMS, Rooms
from storage.audit import AuditLog
from storage.clinic import ClinicStore
from storage.directory import Directory
from storage.inbox import InboxStore
from storage.notifications import NotificationStore
from storage.pools import PoolStore

log = logging.getLogger("hub.inbox")

CHECK_EVERY = 60.0  # seconds between two looks at the waiting conversations


class Escalations:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        routes: InboxStore,
        pools: PoolStore,
        clinic: ClinicStore,
        directory: Directory,
        notifications: NotificationStore,
        audit: AuditLog,
        rooms: Rooms = DEFAULT_ROOMS,
    ) -> None:
        self._rooms = rooms
        self._sio = sio
        self._routes = routes
        self._pools = pools
        self._clinic = clinic
        self._directory = directory
        self._notifications = notifications
        self._audit = audit

    async def run_once(self, now: datetime | None = None) -> int:
        """Escalate what is due; how many escalations were made."""
        now = now or clock.now()
        hours = await self._clinic.hours()
        made = 0
        for route in await self._routes.waiting():
            pool: dict[str, Any] = await self._pools.get(route["pool_id"])
            limit = pool.get("response_minutes")
            if not limit:
                continue
            since = route["waiting_since"]
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            waited = open_seconds(hours, since, now) if hours else (now - since).total_seconds()
            level = int(route.get("escalated") or 0)
            due = 2 if waited >= 2 * limit * 60 else 1 if waited >= limit * 60 else 0
            if due <= level:
                continue
            if not await self._routes.escalate(route["_id"], level, due):
                continue  # another hub did it
            targets = (
                [pool["lead_id"]] if due == 1 and pool.get("lead_id") else []
            ) or await self._directory.with_role("admin")
            for user_id in targets:
                notification = await self._notifications.escalated(
                    user_id, route["_id"], pool, route["patient_id"], due, now
                )
                if notification is not None:
                    await self._sio.emit(
                        Push.NOTIFICATION_NEW,
                        {"notification": notification},
                        room=self._rooms.user(user_id),
                    )
            await self._audit.record(
                "hub",
                "conversation.escalated",
                conversation_id=route["_id"],
                detail={"pool_id": route["pool_id"], "level": due, "to": targets},
            )
            log.warning(
                "conversation=%s escalated to level %d after %.0f min of business hours",
                route["_id"],
                due,
                waited / 60,
            )
            made += 1
        return made
