"""The automatic reply to a patient who writes while the clinic is closed.

Once per closed period and conversation: the reply is a message from
:data:`CLINIC_SENDER` whose ``client_id`` names the opening that ends the period, so
the messages' own unique index (sender, ``client_id``) keeps a second one from being
stored, across hub processes too. It says when the clinic opens, how soon it
answers, and what to do in an emergency (``HUB_CLOSED_REPLY``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from hub.core import clock
from hub.core.office_hours import closed_notice
from hub.core.records import Conversation, Message
from storage.clinic import ClinicStore
from storage.messages import MessageStore

log = logging.getLogger("hub.clinic")

CLINIC_SENDER = "system:clinic"  # no token may carry a ``system:`` subject


class ClosedReplies:
    def __init__(
        self, clinic: ClinicStore, messages: MessageStore, template: str, clinic_name: str
    ) -> None:
        self._clinic = clinic
        self._messages = messages
        self._template = template
        self._clinic_name = clinic_name

    async def after_patient_message(
        self, conversation: Conversation, now: datetime | None = None
    ) -> Message | None:
        """The reply stored for this message, or None: the clinic is open, has no
        hours set, or already answered in this closed period."""
        hours = await self._clinic.hours()
        now = now or clock.now()
        if hours is None or hours.is_open(now):
            return None
        opening = hours.next_opening(now)
        period = opening.astimezone(UTC).isoformat() if opening else "indefinitely"
        message, created = await self._messages.send(
            conversation.conversation_id,
            CLINIC_SENDER,
            f"closed-until:{period}",
            closed_notice(self._template, hours, opening),
            sender_name=self._clinic_name,
        )
        if created:
            log.info(
                "closed-hours reply in conversation=%s until %s",
                conversation.conversation_id,
                period,
            )
            return message
        return None
