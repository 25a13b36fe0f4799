"""Revoked sessions: per person, the instant before which their tokens are refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors


class Revocations:
    """``revoke`` moves a person's cut-off to now (never back); a token whose ``iat`` is
    before the cut-off, or that has no ``iat``, is refused from then on."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._revocations = db[names.REVOCATIONS]

    async def revoke(self, user_id: str, actor_id: str) -> datetime:
        """Record the revocation; returns the cut-off in force (now, or a later one
        already recorded)."""
        now = clock.now()
        with mongo_errors():
            stored = await self._revocations.find_one_and_update(
                {"_id": user_id},
                {"$max": {"revoked_at": now}, "$set": {"by": actor_id}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return _aware(stored["revoked_at"]) if stored else now

    async def revoked_at(self, user_id: str) -> datetime | None:
        with mongo_errors():
            stored = await self._revocations.find_one({"_id": user_id}, {"revoked_at": 1})
        return None if stored is None else _aware(stored["revoked_at"])

    async def refuses(self, user_id: str, issued_at: float | None) -> bool:
        """Whether a token of ``user_id`` issued at ``issued_at`` (its ``iat``) is revoked."""
        revoked_at = await self.revoked_at(user_id)
        if revoked_at is None:
            return False
        return issued_at is None or issued_at < revoked_at.timestamp()


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
