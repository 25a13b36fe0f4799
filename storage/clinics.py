"""The platform's clinics, in its own database: which exist, their state and their
own settings (``hub.core.tenants``). Every hub and worker reads them from here; the
operator API and ``hub clinics`` write them, and the control channel tells the hubs
at once. ``HUB_TENANTS`` seeds the clinics that are not there yet, at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.tenants import SETTINGS, ClinicState, Tenant, parse_tenant
from storage import names
from storage.mongo import INDEXES_VERSION, mongo_errors

INDEXED = "indexes"  # the INDEXES_VERSION its database has


def clinic_of(doc: dict[str, Any]) -> Tenant:
    """A clinic from its registry document (the workers read it synchronously)."""
    return parse_tenant(doc["_id"], {k: doc.get(k) for k in (*SETTINGS, "state")}, state=True)


class ClinicRegistry:
    def __init__(self, platform: AsyncDatabase[Any]) -> None:
        self._clinics = platform[names.CLINICS]

    async def seed(self, clinics: Iterable[Tenant]) -> None:
        """Add the clinics that are not in the registry yet; one that is keeps what the
        registry says (an operator's change outlives the next restart)."""
        now = clock.now()
        writes = [
            UpdateOne(
                {"_id": clinic.tenant_id},
                {
                    "$setOnInsert": {
                        **clinic.settings(),
                        "state": clinic.state,
                        "created_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )  # fmt: skip
            for clinic in clinics
        ]
        if writes:
            with mongo_errors():
                await self._clinics.bulk_write(writes, ordered=False)

    async def put(self, clinic: Tenant) -> bool:
        """Store ``clinic`` whole (settings left out are the hub's); True if it is new."""
        now = clock.now()
        with mongo_errors():
            result = await self._clinics.update_one(
                {"_id": clinic.tenant_id},
                {
                    "$set": {**clinic.settings(), "state": clinic.state, "updated_at": now},
                    "$setOnInsert": {"created_at": now},
                },
                upsert=True,
            )
        return result.upserted_id is not None

    async def check_issuer(self, clinic: Tenant, configured: Iterable[str]) -> None:
        """ValueError if ``clinic``'s identity provider is one of ``configured`` (the
        hub's own, ``HUB_OIDC_ISSUERS``) or another clinic's: an issuer's people are
        one clinic's."""
        if clinic.identity_provider is None:
            return
        issuer = clinic.identity_provider.issuer
        with mongo_errors():
            other = await self._clinics.find_one(
                {"identity_provider.issuer": issuer, "_id": {"$ne": clinic.tenant_id}},
                {"_id": 1},
            )
        if other is not None or issuer in set(configured):
            raise ValueError("identity_provider: its issuer is already another clinic's")

    async def get(self, tenant_id: str) -> Tenant | None:
        with mongo_errors():
            doc = await self._clinics.find_one({"_id": tenant_id})
        return None if doc is None else clinic_of(doc)

    async def all(self) -> list[Tenant]:
        """Every clinic, removed ones included, by id."""
        with mongo_errors():
            docs = await self._clinics.find({}).sort("_id").to_list(length=None)
        return [clinic_of(doc) for doc in docs]

    async def served(self) -> dict[str, tuple[Tenant, str | None]]:
        """The active clinics by id, each with the ``INDEXES_VERSION`` its database's
        indexes were last made at (``mark_indexed``; None: never, as far as the
        registry knows)."""
        with mongo_errors():
            docs = await self._clinics.find({"state": ClinicState.ACTIVE}).to_list(length=None)
        return {doc["_id"]: (clinic_of(doc), doc.get(INDEXED)) for doc in docs}

    async def mark_indexed(self, tenant_ids: Iterable[str]) -> None:
        """Clinics whose databases have the indexes of ``INDEXES_VERSION`` now."""
        with mongo_errors():
            await self._clinics.update_many(
                {"_id": {"$in": list(tenant_ids)}}, {"$set": {INDEXED: INDEXES_VERSION}}
            )


class ClinicActivity:
    """What the operator's list shows of each clinic (``GET /api/v1/clinics``): each
    hub reports, every 30 s, its sockets per clinic (``platform_hubs``, one document
    per hub) and the messages it stored since its last report (``platform_activity``,
    one document per clinic: today's count, UTC, and the last message's time)."""

    def __init__(self, platform: AsyncDatabase[Any]) -> None:
        self._hubs = platform[names.PLATFORM_HUBS]
        self._activity = platform[names.PLATFORM_ACTIVITY]

    async def report(
        self,
        host_id: str,
        sockets: dict[str, int],
        messages: dict[str, tuple[int, datetime]],
        now: datetime,
    ) -> None:
        """This hub's sockets now, and per clinic the messages it stored since its last
        report with the last one's time, counted on ``now``'s UTC day."""
        day = now.date().isoformat()
        with mongo_errors():
            await self._hubs.replace_one(
                {"_id": host_id}, {"sockets": sockets, "seen_at": now}, upsert=True
            )
            for tenant, (count, last_at) in messages.items():
                same_day = await self._activity.update_one(
                    {"_id": tenant, "day": day},
                    {"$inc": {"messages_today": count}, "$max": {"last_at": last_at}},
                )
                if same_day.matched_count == 0:  # the first report of the day (UTC)
                    await self._activity.update_one(
                        {"_id": tenant},
                        {
                            "$set": {"day": day, "messages_today": count},
                            "$max": {"last_at": last_at},
                        },
                        upsert=True,
                    )

    async def summary(self, now: datetime, live_for: timedelta) -> dict[str, dict[str, Any]]:
        """Per clinic: ``sockets`` on the hubs that reported within ``live_for`` of
        ``now``, ``messages_today`` (``now``'s UTC day) and ``last_activity``."""
        day = now.date().isoformat()
        live_after = now - live_for
        found: dict[str, dict[str, Any]] = {}
        with mongo_errors():
            async for hub in self._hubs.find({"seen_at": {"$gt": live_after}}):
                for tenant, count in (hub.get("sockets") or {}).items():
                    entry = found.setdefault(tenant, {})
                    entry["sockets"] = entry.get("sockets", 0) + int(count)
            async for doc in self._activity.find({}):
                entry = found.setdefault(doc["_id"], {})
                entry["messages_today"] = (
                    doc.get("messages_today", 0) if doc.get("day") == day else 0
                )
                entry["last_activity"] = doc.get("last_at")
        return found

    async def forget_hub(self, host_id: str) -> None:
        """A hub that stops takes its sockets out of the count at once."""
        with mongo_errors():
            await self._hubs.delete_one({"_id": host_id})
