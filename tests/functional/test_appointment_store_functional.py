"""The appointment store under races, as two hub processes would run it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, timedelta

import orjson
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from hub.core.appointment_event import AppointmentEvent, parse_event
from hub.core.settings import Settings
from storage import mongo, names
from storage.appointments import AppointmentStore
from storage.conversations import ConversationRepository, conversation_id_for
from tests.support.appointments import T0

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


def make_event(appointment_id: str, status: str, minutes: int, days: int = 3) -> AppointmentEvent:
    return parse_event(
        orjson.dumps(
            {
                "event_id": uuid.uuid4().hex,
                "appointment_id": appointment_id,
                "doctor_id": "dr-race",
                "patient_id": "pat-race",
                "status": status,
                "start": (T0 + timedelta(days=days)).isoformat(),
                "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
            }
        )
    )


@pytest.fixture
async def databases(settings: Settings) -> AsyncIterator[list[AsyncDatabase]]:
    """Two clients on one database: what two hub processes share."""
    clients = [mongo.connect(settings.mongodb_url, settings.mongo_timeout) for _ in range(2)]
    dbs = [client[settings.mongodb_db] for client in clients]
    await mongo.ensure_indexes(dbs[0])
    yield dbs
    for client in clients:
        await client.close()


def stores(dbs: list[AsyncDatabase]) -> list[AppointmentStore]:
    return [AppointmentStore(db, ConversationRepository(db)) for db in dbs]


async def test_one_event_applied_concurrently_creates_each_notification_once(
    databases: list[AsyncDatabase],
):
    """Two writers racing on one event: the projection insert of the loser fails on _id,
    which must stop its bulk and make it judge again instead of notifying twice."""
    one, two = stores(databases)
    created = make_event("apt-race-1", "scheduled", 0)
    results = await asyncio.gather(*(store.apply(created) for store in (one, two, one, two)))
    notified = [n["user_id"] for result in results for n in result.notifications]
    assert sorted(notified) == ["dr-race", "pat-race"]
    db = databases[0]
    assert await db[names.NOTIFICATIONS].count_documents({}) == 2
    conversation_id = conversation_id_for(("dr-race", "pat-race"), "apt-race-1")
    assert await db[names.CONVERSATIONS].count_documents({"_id": conversation_id}) == 1


async def test_two_transitions_racing_on_one_appointment_keep_the_newest(
    databases: list[AsyncDatabase],
):
    """A guarded write that lost to another writer must re-read the appointment, not
    overwrite it: the later event wins whichever write lands first."""
    one, two = stores(databases)
    for n in range(8):
        appointment_id = f"apt-race-2-{n}"
        await one.apply(make_event(appointment_id, "scheduled", 0))
        confirmed = make_event(appointment_id, "confirmed", 5)
        moved = make_event(appointment_id, "confirmed", 10, days=4)
        # Alternate who starts first, so either write can be the one that lands last.
        pair = [one.apply(confirmed), two.apply(moved)]
        results = await asyncio.gather(*(pair if n % 2 else reversed(pair)))
        assert sorted(r.outcome for r in results) in (["applied", "applied"], ["applied", "stale"])
        stored = await databases[0][names.APPOINTMENTS].find_one({"_id": appointment_id})
        assert stored is not None
        assert stored["last_event_id"] == moved.event_id
        assert stored["start"].replace(tzinfo=UTC) == T0 + timedelta(days=4)
        events = await databases[0][names.APPOINTMENT_EVENTS].count_documents(
            {"appointment_id": appointment_id}
        )
        assert events == 3


async def test_an_interrupted_event_is_finished_without_duplicates(
    databases: list[AsyncDatabase],
):
    """An event whose projection was written but whose notifications were not (a hub
    died mid-way) is completed when it comes again, and only the missing part is new."""
    (store,) = stores(databases[:1])
    db = databases[0]
    created = make_event("apt-race-3", "scheduled", 0)
    first = await store.apply(created)
    # Undo what a crash after the projection write would not have written.
    await db[names.APPOINTMENT_EVENTS].delete_one({"_id": created.event_id})
    await db[names.NOTIFICATIONS].delete_one({"_id": first.notifications[1]["_id"]})
    again = await store.apply(created)
    assert again.outcome == "applied"
    assert [n["_id"] for n in again.notifications] == [first.notifications[1]["_id"]]
    assert await db[names.NOTIFICATIONS].count_documents({}) == 2
    assert (await store.apply(created)).outcome == "duplicate"
