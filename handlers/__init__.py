"""Socket.IO event handlers: validate, call one domain function, emit, ack."""

from __future__ import annotations

from handlers import (
    attachments,
    consultations,
    conversations,
    inbox,
    messages,
    notifications,
    presence,
    push,
    record,
    session,
)
from handlers.base import Router


def register(router: Router) -> None:
    """Attach every event of the protocol to the router's server."""
    session.register(router)
    conversations.register(router)
    messages.register(router)
    presence.register(router)
    notifications.register(router)
    consultations.register(router)
    attachments.register(router)
    push.register(router)
    inbox.register(router)
    record.register(router)
