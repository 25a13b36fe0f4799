"""The directory: who people are (display name, role, title), for showing them.

The clinic's back-end is the source (``PUT /api/v1/users/{id}``). Until it has spoken
about someone, the ``name`` claim of their token fills the entry when they connect;
what the back-end set is never overwritten from a token. Names are cached per process
for a minute, so a rename reaches every screen within that long.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors

CACHE_SECONDS = 60.0
CACHE_LIMIT = 50_000


class Directory:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._people = db[names.DIRECTORY]
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def put(self, user_id: str, name: str, role: str, title: str | None) -> dict[str, Any]:
        """The back-end's word on a person (replaces what a token said)."""
        entry = {"name": name, "role": role, "title": title, "source": "backend"}
        with mongo_errors():
            await self._people.update_one(
                {"_id": user_id},
                {"$set": {**entry, "updated_at": clock.now()}},
                upsert=True,
            )
        self._cache.pop(user_id, None)
        return {"id": user_id, **entry}

    async def get(self, user_id: str) -> dict[str, Any] | None:
        """The person's entry as stored (read now, not from the cache); None if none."""
        with mongo_errors():
            doc = await self._people.find_one({"_id": user_id})
        if doc is None:
            return None
        return {
            "id": user_id,
            **{k: doc.get(k) for k in ("name", "role", "title", "source")},
        }

    async def delete(self, user_id: str) -> bool:
        """Remove the person's entry; False if there was none."""
        with mongo_errors():
            result = await self._people.delete_one({"_id": user_id})
        self.forget(user_id)
        return result.deleted_count == 1

    def forget(self, user_id: str) -> None:
        """Drop this process's cached copy (another hub changed the entry)."""
        self._cache.pop(user_id, None)

    async def seen(self, user_id: str, role: str, name: str | None) -> None:
        """A connection from ``user_id``: the token's name and role, unless the back-end
        has set them."""
        fields = {"role": role, "source": "token", "updated_at": clock.now()}
        if name:
            fields["name"] = name
        with mongo_errors():
            try:
                await self._people.update_one(
                    {"_id": user_id, "source": {"$ne": "backend"}}, {"$set": fields}, upsert=True
                )
            except DuplicateKeyError:
                return  # the back-end's entry: kept as it is
        self._cache.pop(user_id, None)

    async def people(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``{id: {id, name, role, title?}}`` for each id; someone unknown is shown by id."""
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        missing = []
        for user_id in dict.fromkeys(user_ids):
            cached = self._cache.get(user_id)
            if cached is not None and now - cached[0] < CACHE_SECONDS:
                found[user_id] = cached[1]
            else:
                missing.append(user_id)
        if missing:
            with mongo_errors():
                docs = await self._people.find({"_id": {"$in": missing}}).to_list(None)
            by_id = {doc["_id"]: doc for doc in docs}
            if len(self._cache) + len(missing) > CACHE_LIMIT:
                self._cache.clear()
            for user_id in missing:
                person = _person(user_id, by_id.get(user_id))
                self._cache[user_id] = (now, person)
                found[user_id] = person
        return found

    async def with_role(self, role: str) -> list[str]:
        """Everyone the back-end or a token recorded with ``role`` (at most 100)."""
        with mongo_errors():
            docs = await self._people.find({"role": role}, {"_id": 1}).to_list(100)
        return [doc["_id"] for doc in docs]

    async def name_of(self, user_id: str) -> str:
        return str((await self.people([user_id]))[user_id]["name"])


def _person(user_id: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    if doc is None:
        return {"id": user_id, "name": user_id, "role": None}
    person = {"id": user_id, "name": doc.get("name") or user_id, "role": doc.get("role")}
    if doc.get("title"):
        person["title"] = doc["title"]
    return person
