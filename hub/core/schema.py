"""What the hub answers and pushes, as models: the other half of ``protocol.py``.

``protocol.py`` holds what clients send; this module holds the shape of every ack and
every server event, and the catalogue that pairs each event with them. The client
SDK's types (``clients/js/src/protocol.ts``) are generated from both
(``python -m hub.core.typescript``), and the test suite's clients check every ack and
every event they receive against these models, so neither can drift from what the hub
really sends. Unknown fields are errors here, unlike in client payloads: a field the
hub sends must be declared.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hub.core import protocol as p
from hub.core.protocol import Event, Push

Timestamp = str  # ISO 8601 in UTC with milliseconds and a Z (protocol.iso)
Role = Literal["patient", "doctor", "nurse", "staff", "admin"]
ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "too_large",
    "unsupported_type",
    "rate_limited",
    "unavailable",
    "internal",
]


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(Shape):
    code: ErrorCode
    message: str


class Refusal(Shape):
    """Every refused client event: ``{ok: false, error}``."""

    ok: Literal[False]
    error: Error


class Ack(Shape):
    ok: Literal[True]


class Person(Shape):
    """Someone as the directory shows them; ``role`` is null for someone it does not
    know (their id is then their name)."""

    id: str
    name: str
    role: Role | None
    title: str | None = None


class Me(Shape):
    id: str
    role: Role
    name: str


class AttachmentSummary(Shape):
    id: str
    name: str
    type: str
    size: int
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None


class Attachment(AttachmentSummary):
    conversation_id: str
    state: Literal["uploading", "pending", "released", "rejected", "retracted"]
    created_at: Timestamp
    reason: str | None = None


class Message(Shape):
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_id: str
    body: str
    created_at: Timestamp
    attachments: list[AttachmentSummary] | None = None
    sender_name: str | None = None
    urgent: bool | None = None
    edited: bool | None = None
    edited_at: Timestamp | None = None
    retracted: bool | None = None
    retracted_at: Timestamp | None = None
    expired: bool | None = None
    change: int | None = None
    visibility: Literal["staff"] | None = None  # staff-only notes


class Conversation(Shape):
    id: str
    member_ids: list[str]
    members: list[Person]
    appointment_id: str | None
    created_at: Timestamp
    last_seq: int
    read_seq: int | None = None  # conversation:list
    routed: bool | None = None  # opened by a patient through a pool


class Expired(Shape):
    conversation_id: str
    seqs: list[int]
    change: int


class AppointmentState(Shape):
    id: str
    doctor_id: str
    patient_id: str
    status: str
    start: Timestamp
    previous_status: str | None
    previous_start: Timestamp | None
    reason: str | None
    updated_at: Timestamp


class Appointment(AppointmentState):
    doctor_name: str | None = None
    patient_name: str | None = None


class Escalation(Shape):
    id: str
    pool_id: str
    pool_name: str | None
    patient_id: str
    level: int


class Notification(Shape):
    id: str
    type: str  # appointment.scheduled ... appointment.rescheduled, inbox.escalated
    created_at: Timestamp
    read_at: Timestamp | None
    appointment: AppointmentState | None = None
    conversation: Escalation | None = None


class Pool(Shape):
    id: str
    name: str


class InboxItem(Shape):
    conversation_id: str
    pool_id: str
    patient: Person
    owner: Person | None
    last_message: Message | None
    waiting_since: Timestamp | None
    waiting_seconds: int
    urgent: bool


class Route(Shape):
    conversation_id: str
    pool_id: str
    owner: Person | None


class Consultation(Shape):
    id: str
    appointment_id: str
    status: Literal["waiting", "open", "ended"]
    started_at: Timestamp | None


class Segment(Shape):
    consultation_id: str
    seq: int
    client_id: str
    speaker: Literal["doctor", "patient"]
    text: str
    at: Timestamp


class ApprovedNote(Shape):
    request_id: str
    text: str
    approved_at: Timestamp


class Export(Shape):
    id: str
    patient_id: str
    state: Literal["pending", "building", "ready", "failed"]
    created_at: Timestamp
    ready_at: Timestamp | None = None
    counts: dict[str, int] | None = None
    links: dict[str, str] | None = None
    links_expire_at: Timestamp | None = None
    reason: str | None = None


class Device(Shape):
    id: str
    kind: Literal["webpush", "fcm"]
    platform: Literal["android", "ios", "web"] | None


# -- acks ------------------------------------------------------------------------------


class SessionMeAck(Ack):
    user: Me
    idle_timeout: float


class SessionRefreshAck(Ack):
    expires_at: Timestamp | None


class ConversationAck(Ack):
    conversation: Conversation


class ConversationsAck(Ack):
    conversations: list[Conversation]


class MessageAck(Ack):
    message: Message


class NoteAck(Ack):
    note: Message


class MessagesAck(Ack):
    messages: list[Message]
    has_more: bool


class NotesAck(Ack):
    notes: list[Message]
    has_more: bool


class SyncAck(Ack):
    messages: list[Message]
    changed: list[Message]
    expired: list[Expired]
    has_more: bool


class PresenceAck(Ack):
    online: dict[str, bool]


class NotificationsAck(Ack):
    notifications: list[Notification]
    unread_count: int
    has_more: bool


class AppointmentsAck(Ack):
    appointments: list[Appointment]
    has_more: bool


class ConsultationAck(Ack):
    consultation: Consultation


class SegmentAck(Ack):
    segment: Segment


class SegmentsAck(Ack):
    segments: list[Segment]
    has_more: bool


class ConsultationEndAck(Ack):
    note_request_id: str | None


class RequestAck(Ack):
    request_id: str


class AutoAck(Ack):
    auto: bool


class ApproveAck(Ack):
    note: ApprovedNote


class AttachmentUrlAck(Ack):
    url: str
    path: str
    expires_at: Timestamp


class DeviceAck(Ack):
    device: Device


class PoolsAck(Ack):
    pools: list[Pool]


class InboxAck(Ack):
    conversations: list[InboxItem]


class RouteAck(Ack):
    route: Route


class ExportAck(Ack):
    export: Export


# -- server events ---------------------------------------------------------------------


class MessageEvent(Shape):
    message: Message


class NoteEvent(Shape):
    note: Message


class ReadEvent(Shape):
    conversation_id: str
    user_id: str
    name: str | None = None
    seq: int


class TypingEvent(Shape):
    conversation_id: str
    user_id: str
    name: str | None = None
    typing: bool


class PresenceEvent(Shape):
    user_id: str
    name: str | None = None
    online: bool


class AppointmentEvent(Shape):
    appointment: Appointment


class NotificationEvent(Shape):
    notification: Notification


class NotificationReadEvent(Shape):
    ids: list[str]


class SmsEvent(Shape):
    cause: str


class AttachmentEvent(Shape):
    attachment: Attachment


class InboxEvent(Shape):
    action: Literal["claimed", "released", "transferred"]
    by: str
    conversation_id: str
    pool_id: str
    owner: Person | None
    note: str | None = None


class ExportEvent(Shape):
    export: Export


class SegmentEvent(Shape):
    segment: Segment


class ConsultationEndedEvent(Shape):
    consultation_id: str


class DeltaEvent(Shape):
    request_id: str
    text: str


class DoneEvent(Shape):
    request_id: str
    text: str
    model: str


class StreamEvent(Shape):
    """``assistant:suggestion`` and ``assistant:note``: pieces, then the whole text."""

    request_id: str
    text: str
    done: bool
    model: str | None = None
    draft: bool | None = None


class AssistantErrorEvent(Shape):
    request_id: str
    code: Literal["unavailable", "timeout", "model_not_found"]
    message: str


class DrainingEvent(Shape):
    reconnect: bool
    message: str


class ExpiringEvent(Shape):
    expires_at: Timestamp


class EndedEvent(Shape):
    reason: Literal["token_expired", "revoked"]


# -- the catalogue ---------------------------------------------------------------------

# Each client event: its payload and what a success answers.
CLIENT_EVENTS: dict[str, tuple[type[BaseModel], type[Ack]]] = {
    Event.SESSION_ME: (p.Empty, SessionMeAck),
    Event.SESSION_REFRESH: (p.SessionRefresh, SessionRefreshAck),
    Event.CONVERSATION_OPEN: (p.ConversationOpen, ConversationAck),
    Event.CONVERSATION_LIST: (p.Empty, ConversationsAck),
    # A staff-only note (visibility "staff") answers {note} instead of {message}.
    Event.MESSAGE_SEND: (p.MessageSend, MessageAck),
    Event.MESSAGE_HISTORY: (p.MessageHistory, MessagesAck),
    Event.MESSAGE_READ: (p.MessageRead, Ack),
    Event.MESSAGE_EDIT: (p.MessageEdit, MessageAck),
    Event.MESSAGE_RETRACT: (p.MessageRetract, MessageAck),
    Event.NOTE_HISTORY: (p.MessageHistory, NotesAck),
    Event.SYNC: (p.Sync, SyncAck),
    Event.TYPING: (p.Typing, Ack),
    Event.PRESENCE_QUERY: (p.PresenceQuery, PresenceAck),
    Event.NOTIFICATION_LIST: (p.NotificationList, NotificationsAck),
    Event.NOTIFICATION_ACK: (p.NotificationAck, Ack),
    Event.APPOINTMENT_LIST: (p.AppointmentList, AppointmentsAck),
    Event.CONSULTATION_JOIN: (p.ConsultationJoin, ConsultationAck),
    Event.CONSULTATION_END: (p.ConsultationRef, ConsultationEndAck),
    Event.TRANSCRIPT_APPEND: (p.TranscriptAppend, SegmentAck),
    Event.TRANSCRIPT_HISTORY: (p.TranscriptHistory, SegmentsAck),
    Event.ASSISTANT_ASK: (p.AssistantAsk, RequestAck),
    Event.ASSISTANT_CONFIGURE: (p.AssistantConfigure, AutoAck),
    Event.ASSISTANT_APPROVE: (p.AssistantApprove, ApproveAck),
    Event.ATTACHMENT_URL: (p.AttachmentUrl, AttachmentUrlAck),
    Event.PUSH_REGISTER: (p.PushRegister, DeviceAck),
    Event.PUSH_UNREGISTER: (p.PushUnregister, Ack),
    Event.CONVERSATION_CLAIM: (p.ConversationRef, RouteAck),
    Event.CONVERSATION_RELEASE: (p.ConversationRef, RouteAck),
    Event.CONVERSATION_TRANSFER: (p.ConversationTransfer, RouteAck),
    Event.INBOX_LIST: (p.InboxList, InboxAck),
    Event.INBOX_POOLS: (p.Empty, PoolsAck),
    Event.EXPORT_REQUEST: (p.Empty, ExportAck),
    Event.EXPORT_URL: (p.ExportRef, ExportAck),
}

SMS_SENT = "notification:sms"  # sent by the Celery workers (workers/sms.py)

SERVER_EVENTS: dict[str, type[Shape]] = {
    Push.MESSAGE_NEW: MessageEvent,
    Push.MESSAGE_READ: ReadEvent,
    Push.TYPING: TypingEvent,
    Push.PRESENCE: PresenceEvent,
    Push.APPOINTMENT_UPDATED: AppointmentEvent,
    Push.NOTIFICATION_NEW: NotificationEvent,
    Push.NOTIFICATION_READ: NotificationReadEvent,
    SMS_SENT: SmsEvent,
    Push.TRANSCRIPT_NEW: SegmentEvent,
    Push.CONSULTATION_ENDED: ConsultationEndedEvent,
    Push.ATTACHMENT_UPDATED: AttachmentEvent,
    Push.INBOX_UPDATED: InboxEvent,
    Push.NOTE_NEW: NoteEvent,
    Push.MESSAGE_EDITED: MessageEvent,
    Push.MESSAGE_RETRACTED: MessageEvent,
    Push.EXPORT_READY: ExportEvent,
    Push.ASSISTANT_DELTA: DeltaEvent,
    Push.ASSISTANT_DONE: DoneEvent,
    Push.ASSISTANT_SUGGESTION: StreamEvent,
    Push.ASSISTANT_NOTE: StreamEvent,
    Push.ASSISTANT_ERROR: AssistantErrorEvent,
    Push.SERVER_DRAINING: DrainingEvent,
    Push.SESSION_EXPIRING: ExpiringEvent,
    Push.SESSION_ENDED: EndedEvent,
}


def check_ack(event: str, ack: Any) -> None:
    """Raise ValueError when ``ack`` is not what ``event`` answers (a refusal, or its
    success shape). Unknown events may only be refused."""
    if isinstance(ack, dict) and ack.get("ok") is False:
        _check(Refusal, ack, f"the refusal of {event}")
        return
    entry = CLIENT_EVENTS.get(event)
    if entry is None:
        raise ValueError(f"{event!r} is no client event, yet it was answered ok")
    answer: type[Ack] = entry[1]
    if event == Event.MESSAGE_SEND and isinstance(ack, dict) and "note" in ack:
        answer = NoteAck
    _check(answer, ack, f"the ack of {event}")


def check_event(event: str, payload: Any) -> None:
    """Raise ValueError when a server event is unknown or not of its shape."""
    model = SERVER_EVENTS.get(event)
    if model is None:
        raise ValueError(f"{event!r} is no server event of the protocol")
    _check(model, payload, event)


def _check(model: type[BaseModel], value: Any, what: str) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise ValueError(f"{what} breaks its schema: {exc}") from None
