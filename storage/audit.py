"""The audit trail of who did what: one document per act, never updated."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors


class AuditLog:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._audit = db[names.AUDIT]

    async def record(self, actor_id: str, action: str, **fields: Any) -> None:
        """``fields`` name what the act was about (``conversation_id=...``) and its
        ``detail``; never a message body."""
        with mongo_errors():
            await self._audit.insert_one(
                {"at": clock.now(), "actor_id": actor_id, "action": action, **fields}
            )
