"""Mapping FHIR subscription notifications to the hub's appointment events."""

from __future__ import annotations

import pytest

from hub.core.appointment_event import AppointmentEvent
from hub.core.errors import BadRequest
from hub.core.fhir_events import Identifiers, Unmappable, parse_notification
from tests.support.fhir_samples import appointment, notification


@pytest.mark.parametrize(
    "fhir, hub",
    [
        ("booked", "confirmed"),
        ("pending", "scheduled"),
        ("proposed", "scheduled"),
        ("fulfilled", "completed"),
        ("cancelled", "cancelled"),
        ("noshow", "no_show"),
    ],
)
def test_statuses_map_and_participants_by_reference(fhir: str, hub: str):
    sample = notification("event-notification", [(7, appointment("a1", fhir, "p1", "d1"))])
    parsed = parse_notification(sample, Identifiers())
    (event,) = parsed.events
    assert isinstance(event, AppointmentEvent)
    assert (event.status, event.patient_id, event.doctor_id) == (hub, "p1", "d1")
    assert event.event_id.startswith("fhir-") and event.event_id.endswith("-7")
    assert event.occurred_at.isoformat() == "2026-11-29T10:00:00+00:00"  # meta.lastUpdated


def test_the_r4b_subscription_status_resource_and_identifier_systems():
    resource = appointment("a2", "booked", "p2", "d2")
    sample = notification("event-notification", [(1, resource)])
    sample["entry"][0]["resource"] = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "subscription": {"reference": "https://ehr.example.org/fhir/Subscription/s1"},
        "notificationEvent": [
            {
                "eventNumber": "1",
                "focus": {"reference": "https://ehr.example.org/fhir/Appointment/a2/_history/1"},
            }
        ],
    }
    parsed = parse_notification(sample, Identifiers("urn:clinic-hub:user", "urn:clinic-hub:user"))
    (event,) = parsed.events
    assert isinstance(event, AppointmentEvent)
    assert (event.patient_id, event.doctor_id) == ("pat-p2", "dr-d2")


def test_id_only_and_unknown_statuses_cannot_map_and_bad_bundles_are_refused():
    sample = notification("event-notification", [(1, appointment("a3", "arrived", "p", "d"))])
    del sample["entry"][1]  # id-only: the status names a resource the Bundle lacks
    (event,) = parse_notification(sample, Identifiers()).events
    assert isinstance(event, Unmappable) and "id-only" in event.reason
    for bad in (None, {"resourceType": "Bundle", "type": "history", "entry": []}, []):
        with pytest.raises(BadRequest):
            parse_notification(bad, Identifiers())
