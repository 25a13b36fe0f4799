"""The records the hub's parts pass to each other, and their wire forms.

``storage/`` builds them from documents; handlers and the domain parts read them and
send ``to_wire()`` to clients. The field names on the wire are the protocol's
(docs/protocol.md); dates are ISO 8601 in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_id": self.client_id,
            "body": self.body,
            "created_at": iso(self.created_at),
        }

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
        )


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    member_ids: tuple[str, ...]
    appointment_id: str | None
    created_at: datetime

    def to_wire(self, last_seq: int) -> dict[str, Any]:
        return {
            "id": self.conversation_id,
            "member_ids": list(self.member_ids),
            "appointment_id": self.appointment_id,
            "created_at": iso(self.created_at),
            "last_seq": last_seq,
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
