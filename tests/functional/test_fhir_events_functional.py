"""FHIR appointment events: an EHR's subscription notifications, applied once and in order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
from fhir.resources.R4B.bundle import Bundle

from channels.names import appointments_dead
from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from tests.support.fhir_samples import appointment, notification
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub


async def post(hub: HubFixture, body: Any, key: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/fhir+json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.post(
            hub.servers[0].make_url("/api/v1/fhir/subscription"), json=body, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def test_handshake_heartbeat_events_duplicates_and_late_ones(
    make_hub: MakeHub, settings: Settings
):
    hub = await make_hub(
        replace(
            settings,
            fhir_patient_system="urn:clinic-hub:user",
            fhir_practitioner_system="urn:clinic-hub:user",
        )
    )
    services = hub.app()[SERVICES]
    key = await services.service_keys.create("ehr")
    tag = hub.user("x")
    patient = await hub.connect(f"pat-p{tag}", "patient")
    booked = appointment(
        f"apt{tag}", "booked", f"p{tag}", f"d{tag}", updated="2026-11-29T10:00:00Z"
    )
    done = appointment(
        f"apt{tag}", "fulfilled", f"p{tag}", f"d{tag}", updated="2026-11-29T11:00:00Z", version="2"
    )
    samples = {
        "handshake": notification("handshake"),
        "heartbeat": notification("heartbeat", since_start=0),
        "booked": notification("event-notification", [(1, booked)], since_start=1),
        "done": notification("event-notification", [(2, done)], since_start=2),
    }
    for sample in samples.values():
        Bundle.model_validate(sample)  # the samples are FHIR R4 as the spec shapes them

    assert (await post(hub, samples["handshake"], None))[0] == 401
    for kind in ("handshake", "heartbeat"):
        status, answer = await post(hub, samples[kind], key)
        assert status == 200 and answer["type"] == kind and answer["events"] == []

    status, answer = await post(hub, samples["booked"], key)
    assert status == 200, answer
    assert answer["events"][0]["outcome"] == "applied"
    pushed = await patient.wait_for("appointment:updated")
    assert pushed["appointment"]["status"] == "confirmed"
    assert pushed["appointment"]["doctor_id"] == f"dr-d{tag}"

    # The EHR delivers the same notification again: once only.
    status, answer = await post(hub, samples["booked"], key)
    assert answer["events"][0]["outcome"] == "duplicate"
    # Event 2, then event 1 again under another number, arriving late: stale.
    status, answer = await post(hub, samples["done"], key)
    assert answer["events"][0]["outcome"] == "applied"
    late = notification("event-notification", [(3, booked)], since_start=3)
    status, answer = await post(hub, late, key)
    assert answer["events"][0]["outcome"] == "stale"
    stored = await services.appointments.get(f"apt{tag}")
    assert stored is not None and stored["status"] == "completed"


async def test_what_cannot_map_goes_to_the_dead_letters(hub: HubFixture):
    services = hub.app()[SERVICES]
    key = await services.service_keys.create("ehr")
    before = await services.redis.xlen(appointments_dead("default"))
    tag = hub.user("y")
    arrived = appointment(f"apt{tag}", "arrived", f"p{tag}", f"d{tag}")
    nobody = appointment(f"apt2{tag}", "booked", f"p{tag}", f"d{tag}")
    nobody["participant"] = nobody["participant"][1:]  # no patient
    mixed = notification("event-notification", [(1, arrived), (2, nobody)])
    status, answer = await post(hub, mixed, key)
    assert status == 200, answer
    assert [e["outcome"] for e in answer["events"]] == ["dead_letter", "dead_letter"]
    dead = await services.redis.xrange(appointments_dead("default"), count=before + 10)
    reasons = [fields["reason"] for _, fields in dead[before:]]
    assert reasons == [
        "an Appointment status the hub does not map",
        "no patient or no practitioner among the participants",
    ]
    assert {fields["source"] for _, fields in dead[before:]} == {"fhir"}
    for refused in ({"resourceType": "Patient"}, {"resourceType": "Bundle", "type": "batch"}):
        status, answer = await post(hub, refused, key)
        assert status == 400 and answer["error"]["code"] == "bad_request"
