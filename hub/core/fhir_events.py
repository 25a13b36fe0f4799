"""Appointment events from FHIR: R4 Subscription notifications (the R5 topic-based
backport, http://hl7.org/fhir/uv/subscriptions-backport), mapped to the hub's event.

A notification is a ``Bundle`` of type ``history``. Its first entry is the
subscription's status: a ``Parameters`` resource in R4 (the backport's
``backport-subscription-status-r4`` profile), a ``SubscriptionStatus`` in R4B and R5.
The status says the notification's ``type``: ``handshake`` and ``heartbeat`` carry no
events; an ``event-notification`` lists its events (``notification-event``: an
``event-number``, a ``timestamp``, the ``focus`` resource's reference), and the
following entries hold the resources (with ``full-resource`` content).

Each event becomes an :class:`~hub.core.appointment_event.AppointmentEvent`:

* ``event_id``: ``fhir-<subscription>-<event number>``, the same on every redelivery
  of a notification, so a duplicate is applied once;
* ``occurred_at``: the Appointment's ``meta.lastUpdated`` (else the event's
  timestamp), so a notification delivered late is judged stale by the hub's usual
  ordering;
* ``status``: booked -> confirmed, pending and proposed -> scheduled, fulfilled ->
  completed, cancelled -> cancelled, noshow -> no_show; any other cannot map;
* the patient and the doctor: the participants whose actor is a ``Patient`` and a
  ``Practitioner``, by the identifier of the configured system if they carry one,
  else by the reference's id.

What cannot map (another status, no patient, an ``id-only`` notification) is
returned as :class:`Unmappable`, with a reason that quotes no values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from hub.core.appointment_event import AppointmentEvent, InvalidEvent, parse_event
from hub.core.errors import BadRequest
from hub.core.protocol import ID_PATTERN

STATUS_MAP = {
    "booked": "confirmed",
    "pending": "scheduled",
    "proposed": "scheduled",
    "fulfilled": "completed",
    "cancelled": "cancelled",
    "noshow": "no_show",
}
NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")


@dataclass(frozen=True, slots=True)
class Unmappable:
    event_number: str
    reason: str
    entry: dict[str, Any]  # what could not map, for the dead letters


@dataclass(frozen=True, slots=True)
class Notification:
    type: str
    subscription: str
    events: list[AppointmentEvent | Unmappable]


@dataclass(frozen=True, slots=True)
class Identifiers:
    """Which identifier system holds the hub's user id, for patients and practitioners
    (None: the reference's own id, ``Patient/<id>``)."""

    patient_system: str | None = None
    practitioner_system: str | None = None


def parse_notification(bundle: Any, identifiers: Identifiers) -> Notification:
    """A notification's type and events; BadRequest if it is not a notification."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("not a FHIR Bundle")
    if bundle.get("type") != "history":
        raise BadRequest("a subscription notification is a Bundle of type history")
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    status = entries[0].get("resource") if entries else None
    if not isinstance(status, dict):
        raise BadRequest("the Bundle's first entry must be the subscription status")
    kind, subscription, events = _status(status)
    if kind not in NOTIFICATION_TYPES:
        raise BadRequest("the subscription status has no known type")
    resources = {
        str(e.get("fullUrl")): e["resource"]
        for e in entries[1:]
        if isinstance(e.get("resource"), dict)
    }
    by_reference = {
        f"{r.get('resourceType')}/{r.get('id')}": r for r in resources.values() if r.get("id")
    }
    tag = hashlib.sha256(subscription.encode()).hexdigest()[:12]
    mapped: list[AppointmentEvent | Unmappable] = []
    if kind == "event-notification":
        for number, timestamp, focus in events:
            resource = resources.get(focus) or by_reference.get(_relative(focus))
            mapped.append(
                _map(f"fhir-{tag}-{number}", number, timestamp, resource, focus, identifiers)
            )
    return Notification(kind, subscription, mapped)


def _status(resource: dict[str, Any]) -> tuple[str, str, list[tuple[str, str | None, str]]]:
    """(type, subscription reference, [(event number, timestamp, focus reference)])."""
    if resource.get("resourceType") == "SubscriptionStatus":
        events = [
            (
                str(e.get("eventNumber", "")),
                e.get("timestamp"),
                str((e.get("focus") or {}).get("reference", "")),
            )
            for e in resource.get("notificationEvent") or []
            if isinstance(e, dict)
        ]
        subscription = str((resource.get("subscription") or {}).get("reference", ""))
        return str(resource.get("type", "")), subscription, events
    if resource.get("resourceType") != "Parameters":
        raise BadRequest("the first entry is neither Parameters nor SubscriptionStatus")
    kind, subscription = "", ""
    events = []
    for parameter in resource.get("parameter") or []:
        if not isinstance(parameter, dict):
            continue
        name = parameter.get("name")
        if name == "type":
            kind = str(parameter.get("valueCode", ""))
        elif name == "subscription":
            subscription = str((parameter.get("valueReference") or {}).get("reference", ""))
        elif name == "notification-event":
            parts = {p.get("name"): p for p in parameter.get("part") or [] if isinstance(p, dict)}
            number = (parts.get("event-number") or {}).get("valueString") or str(
                (parts.get("event-number") or {}).get("valueUnsignedInt", "")
            )
            focus = (parts.get("focus") or {}).get("valueReference") or {}
            events.append(
                (
                    str(number),
                    (parts.get("timestamp") or {}).get("valueInstant"),
                    str(focus.get("reference", "")),
                )
            )
    return kind, subscription, events


def _relative(reference: str) -> str:
    """``Appointment/123`` of ``https://ehr.example/fhir/Appointment/123/_history/2``."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:])


def _map(
    event_id: str,
    number: str,
    timestamp: str | None,
    resource: dict[str, Any] | None,
    focus: str,
    identifiers: Identifiers,
) -> AppointmentEvent | Unmappable:
    def unmappable(reason: str) -> Unmappable:
        return Unmappable(number, reason, {"focus": focus, "resource": resource})

    if not number:
        return unmappable("an event without an event number")
    if resource is None:
        return unmappable("no resource for the event (id-only notifications are not read)")
    if resource.get("resourceType") != "Appointment":
        return unmappable("the event's resource is not an Appointment")
    status = STATUS_MAP.get(str(resource.get("status")))
    if status is None:
        return unmappable("an Appointment status the hub does not map")
    patient = _participant(resource, "Patient", identifiers.patient_system)
    doctor = _participant(resource, "Practitioner", identifiers.practitioner_system)
    if patient is None or doctor is None:
        return unmappable("no patient or no practitioner among the participants")
    occurred = (resource.get("meta") or {}).get("lastUpdated") or timestamp
    try:
        return parse_event(
            {
                "event_id": event_id,
                "appointment_id": resource.get("id"),
                "doctor_id": doctor,
                "patient_id": patient,
                "status": status,
                "start": resource.get("start"),
                "occurred_at": occurred,
                "reason": resource.get("description"),
            }
        )
    except InvalidEvent as exc:
        return unmappable(exc.message)


def _participant(resource: dict[str, Any], kind: str, system: str | None) -> str | None:
    for participant in resource.get("participant") or []:
        actor = participant.get("actor") if isinstance(participant, dict) else None
        if not isinstance(actor, dict):
            continue
        reference = str(actor.get("reference", ""))
        of_kind = actor.get("type") == kind or reference.startswith(f"{kind}/")
        if not (of_kind or f"/{kind}/" in reference):
            continue
        if system is not None:
            identifier = actor.get("identifier") or {}
            if identifier.get("system") == system and ID_PATTERN.fullmatch(
                str(identifier.get("value", ""))
            ):
                return str(identifier["value"])
            continue
        local = _relative(reference).split("/")[-1]
        if ID_PATTERN.fullmatch(local):
            return local
    return None
