"""Revoked sessions: per person, the instant before which their tokens are refused.

A clinic revokes few people, and every connect and every token-authenticated request
asks, so each hub keeps every cut-off of its clinic in memory: read whole when first
needed, read again once it is ``REFRESH`` seconds old, and told at once of a new one
(``note``: the hub that revoked, and every other through the control channel). A
check is then a lookup, not a round trip. A hub that missed the control channel's
word refuses the revoked tokens within ``REFRESH`` seconds. When MongoDB cannot be
read, the copy held is used (logged) if there is one; without one the check fails
(``Unavailable``), so that no token passes unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.errors import Unavailable
from storage import names
from storage.mongo import mongo_errors

log = logging.getLogger("hub.sessions")

REFRESH = 10.0  # seconds a hub's copy of the cut-offs is used before it is read again


class Revocations:
    """``revoke`` moves a person's cut-off to now (never back); a token whose ``iat`` is
    before the cut-off, or that has no ``iat``, is refused from then on."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._revocations = db[names.REVOCATIONS]
        self._cut_offs: dict[str, float] = {}  # user_id -> revoked_at, epoch seconds
        self._read_at: float | None = None  # monotonic time of the last full read
        self._reading: asyncio.Task[None] | None = None

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
        revoked_at = _aware(stored["revoked_at"]) if stored else now
        self.note(user_id, revoked_at.timestamp())
        return revoked_at

    def note(self, user_id: str, revoked_at: float) -> None:
        """A cut-off made now (by this hub or, through the control channel, another)."""
        self._cut_offs[user_id] = max(revoked_at, self._cut_offs.get(user_id, revoked_at))

    async def revoked_at(self, user_id: str) -> datetime | None:
        await self._fresh()
        cut_off = self._cut_offs.get(user_id)
        return None if cut_off is None else datetime.fromtimestamp(cut_off, UTC)

    async def refuses(self, user_id: str, issued_at: float | None) -> bool:
        """Whether a token of ``user_id`` issued at ``issued_at`` (its ``iat``) is revoked."""
        await self._fresh()
        cut_off = self._cut_offs.get(user_id)
        if cut_off is None:
            return False
        return issued_at is None or issued_at < cut_off

    async def _fresh(self) -> None:
        if self._read_at is not None and time.monotonic() - self._read_at < REFRESH:
            return
        if self._reading is None or self._reading.done():
            # One read for every check waiting on it.
            self._reading = asyncio.ensure_future(self._read())
        try:
            await asyncio.shield(self._reading)
        except Unavailable:
            if self._read_at is None:
                raise
            log.warning("revocations: MongoDB unavailable, the copy held is used")

    async def _read(self) -> None:
        with mongo_errors():
            docs = await self._revocations.find({}, {"revoked_at": 1}).to_list(None)
        cut_offs = {doc["_id"]: _aware(doc["revoked_at"]).timestamp() for doc in docs}
        for user_id, cut_off in self._cut_offs.items():  # noted meanwhile
            cut_offs[user_id] = max(cut_off, cut_offs.get(user_id, cut_off))
        self._cut_offs = cut_offs
        self._read_at = time.monotonic()


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
