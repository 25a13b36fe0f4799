"""Urgent patient messages: the emergency notice at once, and a page to the on-call.

A patient message that contains an urgent phrase (``hub.core.urgent``) is stored with
``urgent: true``. Then, once per message: the patient gets the emergency notice (a
message from the clinic, ``HUB_URGENT_REPLY``), the conversation goes to the top of
its pool's inbox, and the person on call is paged by SMS, through quiet hours and
past the daily cap (a STOP still holds). Who is on call: for a pool conversation, the
pool's on-call schedule, else its lead; for any other, its doctors, nurses and staff.
"""

from __future__ import annotations

import logging
from typing import Any

from hub.core import clock
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import NotFound
from hub.core.records import Conversation, Message
from hub.core.urgent import UrgentPhrases
from hub.delivery.closed import CLINIC_SENDER
from hub.delivery.fallback import FallbackScheduler
from storage.audit import AuditLog
from storage.directory import Directory
from storage.inbox import InboxStore
from storage.messages import MessageStore
from storage.pools import PoolStore, on_call_now

log = logging.getLogger("hub.urgent")


class UrgentMessages:
    def __init__(
        self,
        phrases: UrgentPhrases,
        notice: str,
        clinic_name: str,
        messages: MessageStore,
        routes: InboxStore,
        pools: PoolStore,
        directory: Directory,
        fallback: FallbackScheduler,
        audit: AuditLog,
    ) -> None:
        self.phrases = phrases
        self._notice = notice
        self._clinic_name = clinic_name
        self._messages = messages
        self._routes = routes
        self._pools = pools
        self._directory = directory
        self._fallback = fallback
        self._audit = audit

    def is_urgent(self, body: str) -> bool:
        return self.phrases.match(body) is not None

    async def raise_alarm(self, conversation: Conversation, message: Message) -> Message | None:
        """The notice (returned, to be sent to the conversation's devices), the inbox's
        order and the page, for an urgent message just stored."""
        notice, created = await self._messages.send(
            conversation.conversation_id,
            CLINIC_SENDER,
            f"urgent-notice:{message.seq}",
            self._notice,
            sender_name=self._clinic_name,
        )
        if not created:
            return None  # a resend of the message: all of it happened the first time
        if conversation.routed:
            await self._routes.mark_urgent(conversation.conversation_id)
        on_call = await self._on_call(conversation)
        for user_id in on_call:
            self._fallback.page(conversation.conversation_id, message.seq, user_id)
        await self._audit.record(
            message.sender_id,
            "message.urgent",
            conversation_id=conversation.conversation_id,
            detail={"seq": message.seq, "paged": on_call},
        )
        log.warning(
            "urgent message conversation=%s seq=%d: %d paged",
            conversation.conversation_id,
            message.seq,
            len(on_call),
        )
        return notice

    async def _on_call(self, conversation: Conversation) -> list[str]:
        if conversation.routed:
            route = await self._routes.route(conversation.conversation_id)
            if route is not None:
                try:
                    pool: dict[str, Any] = await self._pools.get(route["pool_id"])
                except NotFound:
                    return []
                now = on_call_now(pool, clock.now())
                chosen = now or pool.get("lead_id")
                return [chosen] if chosen else []
        people = await self._directory.people(list(conversation.member_ids))
        return [u for u in conversation.member_ids if people[u].get("role") in CLINIC_ROLES]
