"""Devices registered for push notifications, as the hub sees them (asynchronous).

A device is a browser's Web Push subscription (its endpoint and keys) or an FCM
registration token, keyed by a hash of that address: the same address registered
again, by the same or another user, is the same device, and it belongs to whoever
registered it last (a tablet at the front desk moves from one person to the next).
The workers' side of the same collection is ``storage/push_outbox.py``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors


def device_id(kind: str, address: str) -> str:
    """The id of the device at ``address`` (a Web Push endpoint or an FCM token)."""
    return hashlib.sha256(f"{kind}\n{address}".encode()).hexdigest()[:32]


class PushDevices:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._devices = db[names.PUSH_DEVICES]

    async def register(
        self,
        user_id: str,
        kind: str,
        address: str,
        platform: str,
        locale: str | None,
        keys: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """Store the device for ``user_id``; the device and the user it was moved from
        (None if it was new or already theirs)."""
        now = clock.now()
        fields: dict[str, Any] = {
            "user_id": user_id,
            "kind": kind,
            "address": address,
            "platform": platform,
            "locale": locale,
            "last_seen": now,
        }
        if keys is not None:
            fields["keys"] = keys
        with mongo_errors():
            before = await self._devices.find_one_and_update(
                {"_id": device_id(kind, address)},
                {"$set": fields, "$setOnInsert": {"created_at": now}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        previous = before.get("user_id") if before else None
        return {"_id": device_id(kind, address), **fields}, (
            previous if previous != user_id else None
        )

    async def unregister(self, user_id: str, device: str) -> bool:
        """Forget one of ``user_id``'s devices, by its id; False if it is not theirs."""
        with mongo_errors():
            result = await self._devices.delete_one({"_id": device, "user_id": user_id})
        return result.deleted_count == 1

    async def of_user(self, user_id: str) -> list[dict[str, Any]]:
        """The person's devices, as a clinic sees them: no endpoint, token or key (an
        endpoint is the capability to push to that browser)."""
        fields = {"kind": 1, "platform": 1, "locale": 1, "created_at": 1, "last_seen": 1}
        with mongo_errors():
            docs = await self._devices.find({"user_id": user_id}, fields).to_list(None)
        return [{"id": doc.pop("_id"), **doc} for doc in docs]

    async def remove_all(self, user_id: str) -> int:
        with mongo_errors():
            result = await self._devices.delete_many({"user_id": user_id})
        return result.deleted_count

    async def drop_unseen(self, before: datetime) -> int:
        """Delete the devices last registered before ``before``; how many went."""
        with mongo_errors():
            result = await self._devices.delete_many({"last_seen": {"$lt": before}})
        return result.deleted_count

    async def with_devices(self, user_ids: list[str]) -> set[str]:
        """Which of these users have at least one push device."""
        if not user_ids:
            return set()
        with mongo_errors():
            found = await self._devices.distinct("user_id", {"user_id": {"$in": user_ids}})
        return set(found)
