"""The record as FHIR R4 resources, written as one ``Bundle`` (type ``collection``).

Each resource is checked against the FHIR structure (fhir.resources' R4B models:
Bundle, Communication, Appointment and DocumentReference are the same in R4 and R4B)
before it is written, and the bundle is written entry by entry, so an export of any
size holds one resource in memory at a time. An attachment's bytes go in its
``Attachment.data``, base64-encoded chunk by chunk as they come from GridFS.

People are referenced by identifier (``urn:clinic-hub:user`` and the hub's user
id), with their display name where the directory has one; each conversation is a
``Communication`` of its own that its messages are ``partOf``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from hub.core.errors import HubError
from hub.core.protocol import iso

USER_SYSTEM = "urn:clinic-hub:user"
CONVERSATION_SYSTEM = "urn:clinic-hub:conversation"
MESSAGE_SYSTEM = "urn:clinic-hub:message"
_NAMESPACE = uuid.UUID("0b5c8f4e-7d1a-4c53-9f0e-6a2d1c3b4e5f")
_DATA_MARK = b'"\\u0000data\\u0000"'
_MODELS: dict[str, type[Resource]] = {
    "Communication": Communication,
    "Appointment": Appointment,
    "DocumentReference": DocumentReference,
}
# The hub's appointment statuses in FHIR's Appointment.status.
APPOINTMENT_STATUS = {
    "scheduled": "proposed",
    "confirmed": "booked",
    "completed": "fulfilled",
    "cancelled": "cancelled",
    "no_show": "noshow",
}


class InvalidResource(HubError):
    code = "internal"
    default_message = "a resource of the export does not conform to FHIR R4"


def full_url(kind: str, local_id: str) -> str:
    """A stable ``urn:uuid:`` for one of the hub's records."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{kind}/{local_id}')}"


def person(user_id: str, names: dict[str, str]) -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": USER_SYSTEM, "value": user_id}}
    if names.get(user_id):
        ref["display"] = names[user_id]
    return ref


def thread(conversation: dict[str, Any], patient_id: str, names: dict[str, str]) -> dict[str, Any]:
    """The conversation itself: what its messages are ``partOf``."""
    others = [m for m in conversation["member_ids"] if m != patient_id]
    return {
        "resourceType": "Communication",
        "identifier": [{"system": CONVERSATION_SYSTEM, "value": conversation["_id"]}],
        "status": "completed",
        "subject": person(patient_id, names),
        "topic": {"text": "Conversation with the clinic"},
        "sent": iso(conversation["created_at"]),
        "recipient": [person(m, names) for m in others] or [{"display": "The clinic"}],
    }


def communication(
    message: dict[str, Any],
    conversation: dict[str, Any],
    patient_id: str,
    names: dict[str, str],
) -> dict[str, Any]:
    """One message; a retracted one is ``entered-in-error`` with no payload. Its
    attachments' ``data`` is left to the writer (:meth:`BundleWriter.add`)."""
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": MESSAGE_SYSTEM, "value": str(message["_id"])}],
        "partOf": [{"reference": full_url("conversation", conversation["_id"])}],
        "status": "entered-in-error" if message.get("retracted_at") else "completed",
        "subject": person(patient_id, names),
        "sent": iso(message["created_at"]),
        "sender": person(message["sender_id"], {**names, **_sender_name(message)}),
        "recipient": [
            person(m, names) for m in conversation["member_ids"] if m != message["sender_id"]
        ]
        or [{"display": "The clinic"}],
    }
    if message.get("retracted_at"):
        resource["note"] = [{"text": f"Retracted by its sender at {iso(message['retracted_at'])}"}]
        return resource
    payload: list[dict[str, Any]] = []
    if message.get("body"):
        payload.append({"contentString": message["body"]})
    for attachment in message.get("attachments") or ():
        payload.append(
            {
                "contentAttachment": {
                    "contentType": attachment["type"],
                    "title": attachment["name"],
                    "size": attachment["size"],
                }
            }
        )
    if payload:
        resource["payload"] = payload
    if message.get("edited_at"):
        resource["note"] = [{"text": f"Edited by its sender at {iso(message['edited_at'])}"}]
    return resource


def _sender_name(message: dict[str, Any]) -> dict[str, str]:
    return {message["sender_id"]: message["sender_name"]} if message.get("sender_name") else {}


def appointment(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [{"system": "urn:clinic-hub:appointment", "value": doc["_id"]}],
        "status": APPOINTMENT_STATUS.get(doc["status"], "proposed"),
        "start": iso(doc["start"]),
        "participant": [
            {"actor": person(doc["patient_id"], names), "status": "accepted"},
            {"actor": person(doc["doctor_id"], names), "status": "accepted"},
        ],
    }
    if doc.get("reason"):
        resource["description"] = doc["reason"]
    return resource


def document(
    kind: str,
    consultation: dict[str, Any],
    text: str,
    at: datetime,
    names: dict[str, str],
) -> dict[str, Any]:
    """A consultation's transcript, or a note its doctor approved, as plain text."""
    title = {
        "transcript": "Consultation transcript",
        "note": "Consultation note, approved by the doctor",
    }[kind]
    return {
        "resourceType": "DocumentReference",
        "identifier": [
            {"system": f"urn:clinic-hub:{kind}", "value": f"{consultation['_id']}:{iso(at)}"}
        ],
        "status": "current",
        "description": title,
        "subject": person(consultation["patient_id"], names),
        "author": [person(consultation["doctor_id"], names)],
        "date": iso(at),
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "title": title,
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }


def validate(resource: dict[str, Any]) -> None:
    """Check a resource against its FHIR R4 structure; InvalidResource if it fails."""
    model = _MODELS[resource["resourceType"]]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        # Where and what, never the value: it may be a message's text.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['type']}"
            for error in exc.errors(include_url=False, include_input=False)[:3]
        )
        raise InvalidResource(f"{resource['resourceType']}: {problems}") from None


Write = Callable[[bytes], Awaitable[None]]
Chunks = Callable[[str], Awaitable[AsyncIterator[bytes] | None]]


class BundleWriter:
    """Writes ``{"resourceType": "Bundle", "type": "collection", "entry": [...]}``
    through ``write``, one entry at a time."""

    def __init__(self, write: Write, timestamp: datetime) -> None:
        self._write = write
        self._timestamp = timestamp
        self._first = True
        self.counts: dict[str, int] = {}

    async def open(self) -> None:
        head = {"resourceType": "Bundle", "type": "collection", "timestamp": iso(self._timestamp)}
        await self._write(orjson.dumps(head)[:-1])  # the entries follow; "}" in close()

    async def add(
        self,
        resource: dict[str, Any],
        url: str | None = None,
        files: list[AsyncIterator[bytes] | None] | None = None,
    ) -> None:
        """Validate and write one entry. ``files``: for each ``contentAttachment`` of a
        Communication's payload in order, its bytes (None: left without data)."""
        validate(resource)
        kind = resource["resourceType"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        entry = {"fullUrl": url or f"urn:uuid:{uuid.uuid4()}", "resource": resource}
        if not files:
            await self._write(self._separator() + orjson.dumps(entry))
            return
        streams = iter(files)
        for item in resource.get("payload", ()):
            if "contentAttachment" in item and next(streams, None) is not None:
                item["contentAttachment"]["data"] = "\x00data\x00"
        parts = orjson.dumps(entry).split(_DATA_MARK)
        await self._write(self._separator() + parts[0])
        for part, stream in zip(parts[1:], (f for f in files if f is not None), strict=True):
            await self._write(b'"')
            await self._base64(stream)
            await self._write(b'"' + part)

    async def close(self) -> None:
        await self._write(b"}" if self._first else b"]}")

    def _separator(self) -> bytes:
        # FHIR's JSON has no empty arrays: "entry" comes with the first entry.
        if self._first:
            self._first = False
            return b',"entry":['
        return b","

    async def _base64(self, stream: AsyncIterator[bytes]) -> None:
        rest = b""
        async for piece in stream:
            data = rest + piece
            cut = len(data) - len(data) % 3
            await self._write(base64.b64encode(data[:cut]))
            rest = data[cut:]
        if rest:
            await self._write(base64.b64encode(rest))
