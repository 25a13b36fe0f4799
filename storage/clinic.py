"""The clinic's own settings that its back-end sets: office hours, for now."""

from __future__ import annotations

import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.office_hours import OfficeHours, parse_hours
from storage import names
from storage.mongo import mongo_errors

HOURS_ID = "hours"
# A hub that missed the control channel's word of a change reads it within this long.
CACHE_SECONDS = 30.0


class ClinicStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._clinic = db[names.CLINIC]
        self._hours: tuple[float, OfficeHours | None] | None = None

    async def hours(self) -> OfficeHours | None:
        """The office hours (None: none set, the clinic is always open), read again
        after ``CACHE_SECONDS``."""
        now = time.monotonic()
        if self._hours is not None and now - self._hours[0] < CACHE_SECONDS:
            return self._hours[1]
        with mongo_errors():
            doc = await self._clinic.find_one({"_id": HOURS_ID})
        hours = None if doc is None else parse_hours(doc["hours"])
        self._hours = (now, hours)
        return hours

    def forget(self) -> None:
        """Drop this process's cached copy (another hub changed the hours)."""
        self._hours = None

    async def put_hours(self, hours: OfficeHours) -> OfficeHours:
        with mongo_errors():
            await self._clinic.update_one(
                {"_id": HOURS_ID},
                {"$set": {"hours": hours.to_wire(), "updated_at": clock.now()}},
                upsert=True,
            )
        self._hours = (time.monotonic(), hours)
        return hours
