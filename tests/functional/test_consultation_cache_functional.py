"""The consultations kept for assistant:ask: served while unchanged, on a real Redis,
and never once any hub process has written to the consultation since."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from channels import client as redis_client
from channels.names import consultation_version_key
from channels.versions import ConsultationVersions
from hub.consultations.cache import MAX_AGE, REFRESH_AGE, ConsultationCache
from hub.core.metrics import Metrics
from hub.core.records import Consultation
from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from tests.support.consultations import (
    appointment,
    assistant_settings,
    consultation,
    say,
)
from tests.support.fake_ollama import FakeOllama
from tests.support.hubs import HubFixture, MakeHub, until

Segments = list[dict[str, Any]]


class Source:
    """What MongoDB holds for one consultation, and how often it was read."""

    def __init__(self, consultation_id: str) -> None:
        self.consultation = Consultation(
            consultation_id, "apt", "dr", "pat", "open", datetime(2026, 11, 1, tzinfo=UTC)
        )
        self.segments: Segments = []
        self.reads = 0
        self.gate: asyncio.Event | None = None  # when set, loads wait for it

    def add(self, seq: int) -> dict[str, Any]:
        segment = {
            "consultation_id": self.consultation.consultation_id,
            "seq": seq,
            "text": f"segment {seq}",
        }
        self.segments.append(segment)
        self.segments.sort(key=lambda s: s["seq"])
        return segment

    async def load(self) -> tuple[Consultation, Segments]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.consultation, list(self.segments)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_server: embedded.ChildServer) -> AsyncIterator[Redis]:
    client = redis_client.connect(redis_server.url, 2.0)
    yield client
    await client.aclose()


def cache(redis: Redis, size: int = 8, clock: Clock | None = None) -> ConsultationCache:
    return ConsultationCache(ConsultationVersions(redis), size, Metrics(), clock or Clock())


def cache_sample(metrics: Metrics, result: str) -> float:
    return (
        metrics.registry.get_sample_value("hub_consultation_cache_total", {"result": result}) or 0
    )


def seqs(segments: Segments) -> list[int]:
    return [s["seq"] for s in segments]


def source() -> Source:
    return Source(f"cons_{uuid.uuid4().hex[:10]}")


async def test_copy_is_served_until_any_process_writes(redis: Redis):
    here, there = cache(redis), cache(redis)  # two hub processes
    db = source()
    db.add(1)
    cid = db.consultation.consultation_id

    assert seqs((await here.read(cid, db.load))[1]) == [1]
    assert seqs((await here.read(cid, db.load))[1]) == [1]
    assert db.reads == 1

    db.add(2)
    await there.changed(cid, db.segments[-1])  # written through the other process
    _, segments = await here.read(cid, db.load)
    assert seqs(segments) == [1, 2] and db.reads == 2

    db.consultation = replace(db.consultation, status="ended")
    await there.changed(cid)
    assert (await here.read(cid, db.load))[0].status == "ended" and db.reads == 3


async def test_segments_written_here_extend_the_copy_in_seq_order(redis: Redis):
    here = cache(redis)
    db = source()
    cid = db.consultation.consultation_id
    db.add(1)
    await here.read(cid, db.load)
    for seq in (3, 2):  # two appends whose writes finished out of order
        await here.changed(cid, db.add(seq))
    await here.changed(cid, db.segments[0])  # a segment the copy already has
    _, segments = await here.read(cid, db.load)
    assert seqs(segments) == [1, 2, 3] and db.reads == 1
    segments.clear()  # a caller's list is its own
    assert seqs((await here.read(cid, db.load))[1]) == [1, 2, 3]


async def test_a_write_elsewhere_in_between_drops_the_copy(redis: Redis):
    here, there = cache(redis), cache(redis)
    db = source()
    cid = db.consultation.consultation_id
    await here.read(cid, db.load)
    db.add(1)
    await there.changed(cid, db.segments[-1])
    await here.changed(cid, db.add(2))  # extending would lose segment 1
    assert seqs((await here.read(cid, db.load))[1]) == [1, 2] and db.reads == 2


async def test_a_token_created_again_never_matches_an_old_copy(redis: Redis):
    here = cache(redis)
    db = source()
    cid = db.consultation.consultation_id
    await here.read(cid, db.load)
    await redis.delete(consultation_version_key("default", cid))  # expired, or evicted
    await here.read(cid, db.load)
    assert db.reads == 2


async def test_copies_are_bounded_in_number_and_age(redis: Redis):
    clock = Clock()
    here = cache(redis, size=2, clock=clock)
    a, b, c = source(), source(), source()
    for db in (a, b, a, c):  # c pushes out b, the least recently read
        await here.read(db.consultation.consultation_id, db.load)
    assert len(here) == 2 and (a.reads, b.reads, c.reads) == (1, 1, 1)
    await here.read(b.consultation.consultation_id, b.load)
    assert b.reads == 2

    clock.now += MAX_AGE + 1
    await here.read(c.consultation.consultation_id, c.load)
    assert c.reads == 2


async def test_peek_serves_the_copy_at_once_and_confirm_drops_a_stale_one(redis: Redis):
    metrics = Metrics()
    here, there = ConsultationCache(ConsultationVersions(redis), 8, metrics, Clock()), cache(redis)
    db = source()
    cid = db.consultation.consultation_id
    assert here.peek(cid, db.load) is None  # nothing kept yet
    db.add(1)
    await here.read(cid, db.load)

    reading = here.peek(cid, db.load)
    assert reading is not None and reading.confirm is not None
    assert seqs(reading.segments) == [1]
    assert await reading.confirm()

    await there.changed(cid, db.add(2))  # written through the other process
    stale = here.peek(cid, db.load)
    assert stale is not None and stale.confirm is not None
    assert seqs(stale.segments) == [1]  # unchecked: still the old copy
    assert not await stale.confirm()
    assert here.peek(cid, db.load) is None  # dropped: the next read goes to MongoDB
    assert seqs((await here.read(cid, db.load))[1]) == [1, 2] and db.reads == 2
    # One count per ask: the hit, then the miss of the read after the stale copy.
    assert [cache_sample(metrics, r) for r in ("hit", "miss")] == [1, 2]


async def test_a_copy_only_extended_here_since_the_peek_is_confirmed(redis: Redis):
    """Regression: a segment the doctor's device stored through this process between an
    ask and its check failed the check, so the ask sent its request to the model again
    and waited for the model twice."""
    here, there = cache(redis), cache(redis)
    db = source()
    cid = db.consultation.consultation_id
    db.add(1)
    await here.read(cid, db.load)
    reading = here.peek(cid, db.load)
    assert reading is not None and reading.confirm is not None
    await here.changed(cid, db.add(2))  # stored here after the ask
    assert await reading.confirm()
    assert seqs(reading.segments) == [1]  # the transcript as it was when the ask came
    assert seqs((await here.read(cid, db.load))[1]) == [1, 2] and db.reads == 1

    reading = here.peek(cid, db.load)
    assert reading is not None and reading.confirm is not None
    await here.changed(cid, db.add(3))
    await there.changed(cid, db.add(4))  # then a write through another process
    assert not await reading.confirm()


async def test_a_copy_that_cannot_be_confirmed_is_not_served(tmp_path: Path):
    server = embedded.start_redis(tmp_path)  # this test's own, to stop midway
    client = redis_client.connect(server.url, 0.5)
    try:
        here = cache(client)
        db = source()
        cid = db.consultation.consultation_id
        await here.read(cid, db.load)
        server.stop()  # Redis lost after the copy was taken
        reading = here.peek(cid, db.load)
        assert reading is not None and reading.confirm is not None
        assert not await reading.confirm()
        assert here.peek(cid, db.load) is None
    finally:
        await client.aclose()
        server.stop()


async def test_a_copy_in_use_is_read_again_before_it_ages_out(redis: Redis):
    """A consultation asked about all the time read MongoDB on an ask every MAX_AGE
    seconds; in the benchmark, all 50 at once, every 30 s."""
    clock, metrics = Clock(), Metrics()
    here = ConsultationCache(ConsultationVersions(redis), 8, metrics, clock)
    db = source()
    cid = db.consultation.consultation_id
    await here.read(cid, db.load)
    for refreshes in (1, 2, 3):  # asked every REFRESH_AGE + 1 s, far past MAX_AGE in all
        clock.now += REFRESH_AGE + 1
        reading = here.peek(cid, db.load)
        assert reading is not None and reading.confirm is not None
        assert await reading.confirm()
        await until(lambda n=refreshes: cache_sample(metrics, "refresh") == n)
    assert db.reads == 4  # the first read, then one in the background per ask
    assert [cache_sample(metrics, r) for r in ("hit", "miss")] == [3, 1]


async def test_a_refresh_does_not_replace_a_copy_extended_meanwhile(redis: Redis):
    clock, metrics = Clock(), Metrics()
    here = ConsultationCache(ConsultationVersions(redis), 8, metrics, clock)
    db = source()
    cid = db.consultation.consultation_id
    db.add(1)
    await here.read(cid, db.load)
    clock.now += REFRESH_AGE + 1
    db.gate = asyncio.Event()
    await here.read(cid, db.load)  # a hit; the refresh waits in its load
    await until(lambda: db.reads == 2)
    await here.changed(cid, db.add(2))  # extends the copy under a new token
    db.gate.set()
    await until(lambda: cache_sample(metrics, "refresh") == 1)
    _, segments = await here.read(cid, db.load)
    assert seqs(segments) == [1, 2]
    assert cache_sample(metrics, "miss") == 1  # the extended copy was kept and served


async def test_without_redis_every_read_goes_to_mongodb(redis: Redis):
    dead = redis_client.connect(f"redis://127.0.0.1:{embedded.free_port()}/0", 0.5)
    try:
        metrics = Metrics()
        here = ConsultationCache(ConsultationVersions(dead), 8, metrics)
        db = source()
        cid = db.consultation.consultation_id
        await here.read(cid, db.load)
        await here.changed(cid, db.add(1))  # logged, not raised: the write stands
        _, segments = await here.read(cid, db.load)
        assert seqs(segments) == [1] and db.reads == 2
        assert cache_sample(metrics, "bypass") == 2
    finally:
        await dead.aclose()


async def test_size_zero_turns_it_off(redis: Redis):
    here = cache(redis, size=0)
    db = source()
    for _ in range(2):
        await here.read(db.consultation.consultation_id, db.load)
    assert db.reads == 2 and len(here) == 0


# -- through real hubs ----------------------------------------------------------------


@pytest.fixture
async def hubs(make_hub: MakeHub, settings: Settings, ollama_server: FakeOllama) -> HubFixture:
    """Two hubs on the same stores."""
    fixture = await make_hub(assistant_settings(settings, ollama_server))
    await fixture.start()
    return fixture


def cache_count(hubs: HubFixture, result: str) -> float:
    return cache_sample(hubs.app(0)[SERVICES].metrics, result)


async def test_ask_sees_every_segment_whichever_hub_stored_it(
    hubs: HubFixture, ollama_server: FakeOllama
):
    doctor, patient, consultation_id = await consultation(hubs)  # both on hub 0
    tablet = await hubs.connect(doctor.user_id, "doctor", server=1)

    async def ask() -> str:
        """The transcript the model was given for a new ask from hub 0."""
        asked = await doctor.call(
            "assistant:ask", {"consultation_id": consultation_id, "question": "What next?"}
        )
        assert asked["ok"], asked
        await doctor.wait_for("assistant:done", lambda d: d["request_id"] == asked["request_id"])
        return str(ollama_server.requests[-1]["messages"][1]["content"])

    await say(doctor, consultation_id, "first words")
    assert "first words" in await ask()
    assert "first words" in await ask()
    assert (cache_count(hubs, "miss"), cache_count(hubs, "hit")) == (1, 1)

    await say(tablet, consultation_id, "said through the tablet on hub 1")
    assert "said through the tablet on hub 1" in await ask()
    assert (cache_count(hubs, "miss"), cache_count(hubs, "hit")) == (2, 1)

    await say(doctor, consultation_id, "said through hub 0 itself")
    assert "said through hub 0 itself" in await ask()  # the copy was extended
    assert (cache_count(hubs, "miss"), cache_count(hubs, "hit")) == (2, 2)

    # Access is still checked on every ask, copy or not.
    refused = await patient.call(
        "assistant:ask", {"consultation_id": consultation_id, "question": "And me?"}
    )
    assert refused["error"]["code"] == "forbidden"


async def test_a_kept_copy_still_waiting_does_not_refuse_an_ask(hubs: HubFixture):
    """A copy taken before the doctor joined says "waiting"; the consultation may have
    opened through another hub since, so it must not decide the ask's conflict."""
    doctor = await hubs.connect(hubs.user(f"doc-{uuid.uuid4().hex[:4]}"), "doctor")
    patient = await hubs.connect(hubs.user(f"pat-{uuid.uuid4().hex[:4]}"), "patient")
    appointment_id = await appointment(hubs, doctor.user_id, patient.user_id)
    early = await patient.call("consultation:join", {"appointment_id": appointment_id})
    consultation_id = early["consultation"]["id"]
    ask = {"consultation_id": consultation_id, "question": "Anything yet?"}
    assert (await doctor.call("assistant:ask", ask))["error"]["code"] == "conflict"

    tablet = await hubs.connect(doctor.user_id, "doctor", server=1)
    assert (await tablet.call("consultation:join", {"appointment_id": appointment_id}))["ok"]
    asked = await doctor.call("assistant:ask", ask)  # through hub 0 and its copy
    assert asked["ok"], asked
    await doctor.wait_for("assistant:done", lambda d: d["request_id"] == asked["request_id"])
