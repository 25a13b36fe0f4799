"""Subscription notifications as an R4 FHIR server sends them under the R5 topic-based
backport (http://hl7.org/fhir/uv/subscriptions-backport, STU 1.1): a ``history``
Bundle whose first entry is the status (``Parameters``, profile
``backport-subscription-status-r4``), then the focus resources (``full-resource``).
Shaped after the implementation guide's examples (notification-status-r4,
notification-full-resource-r4)."""

from __future__ import annotations

import uuid
from typing import Any

EHR = "https://ehr.example.org/fhir"
SUBSCRIPTION = f"{EHR}/Subscription/appointments-hub"
TOPIC = "http://example.org/FHIR/SubscriptionTopic/appointment-change"
STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)
NOTIFICATION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-notification-r4"
)


def appointment(
    appointment_id: str,
    status: str,
    patient: str,
    practitioner: str,
    *,
    start: str = "2026-12-14T09:30:00+01:00",
    updated: str = "2026-11-29T10:00:00Z",
    version: str = "1",
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": appointment_id,
        "meta": {"versionId": version, "lastUpdated": updated},
        "status": status,
        "description": "Follow-up visit",
        "start": start,
        "end": start.replace("09:30", "10:00"),
        "participant": [
            {
                "actor": {
                    "reference": f"Patient/{patient}",
                    "identifier": {"system": "urn:clinic-hub:user", "value": f"pat-{patient}"},
                },
                "status": "accepted",
            },
            {
                "actor": {
                    "reference": f"Practitioner/{practitioner}",
                    "identifier": {"system": "urn:clinic-hub:user", "value": f"dr-{practitioner}"},
                },
                "status": "accepted",
            },
        ],
    }


def notification(
    kind: str,
    events: list[tuple[int, dict[str, Any]]] = (),
    since_start: int = 0,  # type: ignore[assignment]
) -> dict[str, Any]:
    """A notification of ``kind`` with ``(event number, Appointment)`` events."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since_start)},
    ]
    entries: list[dict[str, Any]] = []
    for number, resource in events:
        url = f"{EHR}/Appointment/{resource['id']}"
        parameters.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "timestamp", "valueInstant": resource["meta"]["lastUpdated"]},
                    {"name": "focus", "valueReference": {"reference": url}},
                ],
            }
        )
        entries.append(
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "PUT", "url": f"Appointment/{resource['id']}"},
                "response": {"status": "200"},
            }
        )
    status = {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": "2026-11-29T10:00:05Z",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{status['id']}",
                "resource": status,
                "request": {"method": "GET", "url": f"{SUBSCRIPTION}/$status"},
                "response": {"status": "200"},
            },
            *entries,
        ],
    }
