"""Consultation scenarios: an appointment, a joined consultation, transcript."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from hub.core import clock
from hub.core.appointment_event import parse_event
from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from tests.support.fake_ollama import MODEL, FakeOllama
from tests.support.hubs import Client, HubFixture

T0 = clock.now().replace(minute=0, second=0, microsecond=0)  # events happen from here on


def assistant_settings(settings: Settings, fake: FakeOllama, **changes: Any) -> Settings:
    assert fake.server is not None
    host = str(fake.server.make_url("")).rstrip("/")
    base = replace(
        settings.assistant,
        ollama_host=host,
        model=MODEL,
        timeout=2.0,
        queue_wait=0.5,
        every_segments=3,
        every_seconds=60.0,
    )
    return replace(settings, assistant=replace(base, **changes))


async def appointment(
    hub: HubFixture,
    doctor: str,
    patient: str,
    status: str = "scheduled",
    appointment_id: str | None = None,
    minutes: int = 0,
) -> str:
    appointment_id = appointment_id or f"apt-{uuid.uuid4().hex[:8]}"
    await hub.app()[SERVICES].updates.handle(
        parse_event(
            orjson.dumps(
                {
                    "event_id": uuid.uuid4().hex,
                    "appointment_id": appointment_id,
                    "doctor_id": doctor,
                    "patient_id": patient,
                    "status": status,
                    # Ahead of today, whenever the suite runs: clients list what is to come.
                    "start": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
                    "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
                }
            )
        )
    )
    return appointment_id


async def consultation(hub: HubFixture) -> tuple[Client, Client, str]:
    """A doctor and a patient who both joined an open consultation."""
    doctor = await hub.connect(hub.user(f"doc-{uuid.uuid4().hex[:4]}"), "doctor")
    patient = await hub.connect(hub.user(f"pat-{uuid.uuid4().hex[:4]}"), "patient")
    appointment_id = await appointment(hub, doctor.user_id, patient.user_id)
    joined = await doctor.call("consultation:join", {"appointment_id": appointment_id})
    assert joined["ok"], joined
    assert (await patient.call("consultation:join", {"appointment_id": appointment_id}))["ok"]
    return doctor, patient, joined["consultation"]["id"]


async def say(
    doctor: Client,
    consultation_id: str,
    text: str,
    speaker: str = "patient",
    client_id: str | None = None,
) -> dict[str, Any]:
    answer = await doctor.call(
        "transcript:append",
        {
            "consultation_id": consultation_id,
            "client_id": client_id or uuid.uuid4().hex[:12],
            "speaker": speaker,
            "text": text,
        },
    )
    assert answer["ok"], answer
    return answer["segment"]
