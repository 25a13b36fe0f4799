"""What a clinic costs a hub: nothing per clinic in Redis connections, services built
on first use and dropped when unused, and one hub of the fleet going round the
clinics in use nowhere (the sweep lease)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from channels.appointments import publish_event
from channels.lease import Lease
from hub.core.tenants import Tenant
from hub.server import embedded
from hub.server.appkeys import CLINICS, SERVICES
from hub.server.background import IdleRounds, Kind
from hub.server.clinics import IDLE_AFTER
from storage import names
from storage.clinics import INDEXED, ClinicRegistry
from storage.mongo import INDEXES_VERSION
from storage.tenants import platform_database, tenant_database
from tests.support.appointments import event
from tests.support.hubs import TIMEOUT, HubFixture, until

CLINICS_ADDED = 30


@pytest.fixture
async def redis(redis_server: embedded.ChildServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=TIMEOUT)
    yield client
    await client.aclose()


async def connections(redis: Redis) -> int:
    return len(await redis.client_list())


async def test_clinics_added_while_the_hub_runs_cost_no_redis_connection(
    hub: HubFixture, redis: Redis
):
    """Each clinic's appointment stream had a blocking reader of its own: a connection
    per clinic per hub (30,000 for a thousand clinics on ten hubs). Now one read
    covers every stream, and a clinic's services exist only while it is in use."""
    await hub.start()
    clinics, services = hub.app()[CLINICS], hub.app()[SERVICES]
    registry = ClinicRegistry(platform_database(services.mongo, hub.settings.mongodb_db))

    def stored(tenant: str, appointment_id: str) -> Any:
        db = tenant_database(services.mongo, hub.settings.mongodb_db, tenant)
        return db[names.APPOINTMENTS].find_one({"_id": appointment_id})

    async def add_and_use(count: int) -> list[str]:
        """``count`` new clinics, an appointment event applied in each."""
        tenants = [f"c{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for tenant in tenants:
            await registry.put(Tenant(tenant))
        await clinics.reload()
        assert all(tenant in clinics for tenant in tenants)
        assert not set(tenants) & set(clinics.in_use())  # served, not built
        # Nor by the look for entries that another hub left pending (it built every
        # clinic, each time, when it found none).
        await clinics.stream._ensure_groups()
        await clinics.stream._claim()
        assert not set(tenants) & set(clinics.in_use())
        for tenant in tenants:
            await publish_event(
                services.redis, event("apt-1", "scheduled", doctor_id="dr", patient_id="p"),
                tenant=tenant,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        for tenant in tenants:
            while await stored(tenant, "apt-1") is None:
                assert time.monotonic() < deadline, f"the event of {tenant} was not applied"
                await asyncio.sleep(0.05)
        assert set(tenants) <= set(clinics.in_use())  # built by the event
        return tenants

    # A first batch: the pools (the hub's, Celery's for the SMS fallbacks) grow to
    # what this load needs, up to their caps. A second as large costs no connection.
    await add_and_use(CLINICS_ADDED)
    before = await connections(redis)
    tenants = await add_and_use(CLINICS_ADDED)
    assert await connections(redis) - before < 3

    # Unused for IDLE_AFTER, with no socket here: dropped, still served, built again.
    await clinics.drop_unused(now=time.monotonic() + IDLE_AFTER + 1)
    assert not set(tenants) & set(clinics.in_use())
    assert "default" in clinics.in_use()  # the hub's own stays
    assert all(tenant in clinics for tenant in tenants)
    await publish_event(
        services.redis, event("apt-again", "scheduled", doctor_id="dr", patient_id="p"),
        tenant=tenants[0],
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while await stored(tenants[0], "apt-again") is None:
        assert time.monotonic() < deadline, "the event after the drop was not applied"
        await asyncio.sleep(0.05)
    assert set(clinics.in_use()) & set(tenants) == {tenants[0]}


class _Clinic:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant


async def test_one_hub_at_a_time_goes_round_the_idle_clinics(redis: Redis):
    """The sweep lease: the hub that holds it goes round every idle clinic; another
    does nothing until the holder stops, then takes over."""
    key = f"test:lease:{uuid.uuid4().hex}"
    idle = [Tenant(f"idle-{n}") for n in range(5)]
    swept: dict[str, list[str]] = {"a": [], "b": []}
    closed: list[str] = []

    hourly: list[str] = []

    def rounds(name: str) -> IdleRounds:
        async def step(services: Any) -> None:
            swept[name].append(services.tenant)

        async def hourly_step(services: Any) -> None:
            hourly.append(services.tenant)

        async def close(services: Any) -> None:
            closed.append(services.tenant)

        return IdleRounds(
            Lease(redis, key, name, ttl=5.0),
            [Kind("record", 0.0, step), Kind("hourly", 3600.0, hourly_step)],
            lambda: idle,
            lambda tenant: True,
            lambda clinic: _Clinic(clinic.tenant_id),  # type: ignore[arg-type, return-value]
            close,
            round_every=0.05,
            retry=0.02,
        )

    first, second = rounds("a"), rounds("b")
    a = asyncio.create_task(first.run())
    await until(lambda: first.rounds >= 1)
    b = asyncio.create_task(second.run())
    await until(lambda: first.rounds >= 4)
    assert second.rounds == 0 and swept["b"] == []
    assert swept["a"][:5] == [c.tenant_id for c in idle]
    assert len(closed) >= 5  # what a round builds, it closes
    assert sorted(hourly) == sorted(c.tenant_id for c in idle)  # at its interval: once
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    await first.release()
    await until(lambda: second.rounds >= 1)
    assert swept["b"][:5] == [c.tenant_id for c in idle]
    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    assert await redis.get(key) == b"b"
    await redis.delete(key)


async def test_a_clinic_on_older_indexes_is_served_while_they_are_made_anew(hub: HubFixture):
    """A hub upgraded to a release with other indexes serves its clinics at once, on
    the indexes they have, and makes the new ones in the background; a clinic the
    registry knows no indexes of gets them before it is served."""
    await hub.start()
    clinics, services = hub.app()[CLINICS], hub.app()[SERVICES]
    platform = platform_database(services.mongo, hub.settings.mongodb_db)
    registry = ClinicRegistry(platform)
    older, new = f"c{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    for tenant in (older, new):
        await registry.put(Tenant(tenant))
    await platform[names.CLINICS].update_one({"_id": older}, {"$set": {INDEXED: "older"}})
    db = tenant_database(services.mongo, hub.settings.mongodb_db, older)
    await db[names.MESSAGES].insert_one({"_id": "m1"})  # a database without its indexes

    await clinics.reload()
    assert older in clinics and new in clinics
    assert clinics.upgrading == {older}  # served before its new indexes are made
    assert (await registry.served())[new][1] == INDEXES_VERSION  # made before serving

    async def made_anew() -> bool:
        return (await registry.served())[older][1] == INDEXES_VERSION

    deadline = time.monotonic() + TIMEOUT
    while not await made_anew():
        assert time.monotonic() < deadline, "the older clinic's indexes were not made"
        await asyncio.sleep(0.05)
    assert len(await db[names.MESSAGES].index_information()) > 1
