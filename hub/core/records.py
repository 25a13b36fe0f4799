"""The records the hub's parts pass to each other, and their wire forms.

``storage/`` builds them from documents; handlers and the domain parts read them and
send ``to_wire()`` to clients. The field names on the wire are the protocol's
(docs/protocol.md); dates are ISO 8601 in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from hub.core.protocol import iso


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_id: str
    body: str
    created_at: datetime
    # Each attachment's summary (Attachment.summary()), as it was when the message was sent.
    attachments: tuple[dict[str, Any], ...] = ()
    sender_name: str | None = None  # the sender's display name when it was sent
    urgent: bool = False  # a patient's message with an urgent phrase (hub.core.urgent)
    edited_at: datetime | None = None  # the body is an edit of what was sent
    retracted_at: datetime | None = None  # withdrawn by its sender: no body, no attachments
    expired: bool = False  # deleted by the retention policy (only its seq remains)
    # The conversation's change counter when it was last edited or retracted (sync's
    # ``changes`` cursors); 0 for a message never changed.
    change: int = 0

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "id": self.message_id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_id": self.client_id,
            "body": self.body,
            "created_at": iso(self.created_at),
        }
        if self.attachments:
            wire["attachments"] = list(self.attachments)
        if self.sender_name:
            wire["sender_name"] = self.sender_name
        if self.urgent:
            wire["urgent"] = True
        if self.edited_at is not None:
            wire["edited"] = True
            wire["edited_at"] = iso(self.edited_at)
        if self.retracted_at is not None:
            wire["retracted"] = True
            wire["retracted_at"] = iso(self.retracted_at)
        if self.expired:
            wire["expired"] = True
        if self.change:
            wire["change"] = self.change
        return wire

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Message:
        return cls(
            message_id=str(doc["_id"]),
            conversation_id=doc["conversation_id"],
            seq=int(doc["seq"]),
            sender_id=doc["sender_id"],
            client_id=doc["client_id"],
            body=doc["body"],
            created_at=doc["created_at"],
            attachments=tuple(doc.get("attachments") or ()),
            sender_name=doc.get("sender_name"),
            urgent=bool(doc.get("urgent")),
            edited_at=doc.get("edited_at"),
            retracted_at=doc.get("retracted_at"),
            expired=bool(doc.get("expired")),
            change=int(doc.get("change", 0)),
        )


class AttachmentState(StrEnum):
    UPLOADING = "uploading"  # bytes arriving: visible to nobody
    PENDING = "pending"  # stored, waiting for the scan and the image check
    RELEASED = "released"  # checked: may be attached and downloaded
    REJECTED = "rejected"  # refused by a check; its bytes are deleted
    RETRACTED = "retracted"  # withdrawn with its message: kept for the record, served to nobody


@dataclass(frozen=True, slots=True)
class Attachment:
    attachment_id: str
    conversation_id: str
    uploader_id: str
    name: str
    content_type: str  # of the stored file (a HEIC photo is stored as JPEG)
    size: int
    state: AttachmentState
    created_at: datetime
    reason: str | None = None  # why it was rejected
    width: int | None = None
    height: int | None = None
    file_id: Any = None  # GridFS id of the bytes (the upload, then the cleaned file)
    thumbnail_id: Any = None
    attached_to: str | None = None  # the client_id of the message that carries it

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    def summary(self) -> dict[str, Any]:
        """What a message carries of it: ``{id, name, type, size, width?, height?,
        thumbnail?}``."""
        wire: dict[str, Any] = {
            "id": self.attachment_id,
            "name": self.name,
            "type": self.content_type,
            "size": self.size,
        }
        if self.width is not None and self.height is not None:
            wire["width"], wire["height"] = self.width, self.height
        if self.thumbnail_id is not None:
            wire["thumbnail"] = f"/api/v1/attachments/{self.attachment_id}/thumbnail"
        return wire

    def to_wire(self) -> dict[str, Any]:
        wire = {
            **self.summary(),
            "conversation_id": self.conversation_id,
            "state": self.state.value,
            "created_at": iso(self.created_at),
        }
        if self.reason:
            wire["reason"] = self.reason
        return wire

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Attachment:
        return cls(
            attachment_id=doc["_id"],
            conversation_id=doc["conversation_id"],
            uploader_id=doc["uploader_id"],
            name=doc["name"],
            content_type=doc.get("type", "application/octet-stream"),
            size=int(doc.get("size", 0)),
            state=AttachmentState(doc["state"]),
            created_at=doc["created_at"],
            reason=doc.get("reason"),
            width=doc.get("width"),
            height=doc.get("height"),
            file_id=doc.get("file_id"),
            thumbnail_id=doc.get("thumbnail_id"),
            attached_to=(doc.get("attached") or {}).get("client_id"),
        )


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    member_ids: tuple[str, ...]
    appointment_id: str | None
    created_at: datetime
    # Opened by a patient with a pool: its staff are its pool's members and its owner
    # (storage/inbox.py), not in ``member_ids``.
    routed: bool = False

    def to_wire(self, last_seq: int) -> dict[str, Any]:
        return {
            "id": self.conversation_id,
            "member_ids": list(self.member_ids),
            "appointment_id": self.appointment_id,
            "created_at": iso(self.created_at),
            "last_seq": last_seq,
            **({"routed": True} if self.routed else {}),
        }


@dataclass(frozen=True, slots=True)
class Consultation:
    consultation_id: str
    appointment_id: str
    doctor_id: str
    patient_id: str
    status: str  # waiting (the doctor has not joined), open, ended
    started_at: datetime | None
    auto: bool = False
    summary: str = ""
    summary_upto: int = 0  # the last seq the summary covers

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.consultation_id,
            "appointment_id": self.appointment_id,
            "status": self.status,
            "started_at": iso(self.started_at) if self.started_at else None,
        }
