"""Pools: the clinic's inboxes (a nurse triage pool, the front desk, a doctor's team).

Set by the clinic's back-end (``PUT /api/v1/pools/{id}``): a name, the members by user
id, a lead who hears of escalations, and the response time the pool promises. Cached
per process for 30 seconds; a change made through any hub drops every hub's copy at
once (``forget``, through the control channel).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.errors import NotFound
from hub.core.protocol import iso
from storage import names
from storage.mongo import mongo_errors

CACHE_SECONDS = 30.0


class PoolStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._pools = db[names.POOLS]
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def put(
        self,
        pool_id: str,
        name: str,
        member_ids: list[str],
        lead_id: str | None,
        response_minutes: int | None,
        on_call: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        pool = {
            "name": name,
            "member_ids": member_ids,
            "lead_id": lead_id,
            "response_minutes": response_minutes,
            "on_call": on_call or [],
        }
        with mongo_errors():
            await self._pools.update_one(
                {"_id": pool_id},
                {"$set": {**pool, "updated_at": clock.now()}},
                upsert=True,
            )
        self._cache[pool_id] = (time.monotonic(), {"_id": pool_id, **pool})
        return {"id": pool_id, **pool}

    async def get(self, pool_id: str) -> dict[str, Any]:
        """The pool; NotFound if there is none."""
        cached = self._cache.get(pool_id)
        if cached is None or time.monotonic() - cached[0] >= CACHE_SECONDS:
            with mongo_errors():
                doc = await self._pools.find_one({"_id": pool_id})
            cached = (time.monotonic(), doc)
            self._cache[pool_id] = cached
        if cached[1] is None:
            raise NotFound("no such pool")
        return cached[1]

    async def find(self, pool_id: str) -> dict[str, Any] | None:
        """The pool as stored now (not from the cache); None if there is none."""
        with mongo_errors():
            doc = await self._pools.find_one({"_id": pool_id})
        return None if doc is None else _wire(doc)

    async def delete(self, pool_id: str) -> bool:
        with mongo_errors():
            result = await self._pools.delete_one({"_id": pool_id})
        self.forget(pool_id)
        return result.deleted_count == 1

    async def remove_member(self, user_id: str) -> list[str]:
        """Take ``user_id`` out of every pool (as member and as lead); the pools changed."""
        with mongo_errors():
            docs = await self._pools.find(
                {"$or": [{"member_ids": user_id}, {"lead_id": user_id}]}, {"_id": 1}
            ).to_list(None)
            changed = [doc["_id"] for doc in docs]
            if changed:
                await self._pools.update_many(
                    {"_id": {"$in": changed}},
                    {"$pull": {"member_ids": user_id}, "$set": {"updated_at": clock.now()}},
                )
                await self._pools.update_many(
                    {"_id": {"$in": changed}, "lead_id": user_id}, {"$set": {"lead_id": None}}
                )
        for pool_id in changed:
            self.forget(pool_id)
        return changed

    def forget(self, pool_id: str) -> None:
        """Drop this process's cached copy (another hub changed the pool)."""
        self._cache.pop(pool_id, None)

    async def pools_of(self, user_id: str) -> list[dict[str, Any]]:
        """``[{id, name}]`` of the pools ``user_id`` is a member of."""
        with mongo_errors():
            docs = await self._pools.find({"member_ids": user_id}, {"name": 1}).to_list(100)
        return [{"id": doc["_id"], "name": doc.get("name", doc["_id"])} for doc in docs]

    async def is_member(self, pool_id: str, user_id: str) -> bool:
        try:
            pool = await self.get(pool_id)
        except NotFound:
            return False
        return user_id in pool["member_ids"]


def on_call_now(pool: dict[str, Any], now: datetime) -> str | None:
    """Who the pool's schedule has on call at ``now`` (the first matching shift)."""
    for shift in pool.get("on_call") or []:
        start = datetime.fromisoformat(shift["start"])
        end = datetime.fromisoformat(shift["end"])
        if start <= now < end:
            return str(shift["user_id"])
    return None


def shift(user_id: str, start: datetime, end: datetime) -> dict[str, str]:
    return {"user_id": user_id, "start": iso(start), "end": iso(end)}


def _wire(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "member_ids", "lead_id", "response_minutes", "on_call")
    return {"id": doc["_id"], **{k: doc.get(k) for k in keys}}
