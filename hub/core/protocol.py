"""The wire format, in one place: event names, payload schemas, error codes.

``docs/protocol.md`` is the prose version of this module; change both together.
Handlers parse every payload with :func:`parse` before touching it, so a value that is
not of the declared type (a ``{"$gt": ""}`` where an id belongs, say) never gets past
the edge.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from hub.core.errors import BadRequest

PROTOCOL_VERSION = 1
SOCKETIO_PATH = "socket.io"

ERROR_CODES = (
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",  # HTTP only
    "conflict",
    "too_large",  # HTTP only
    "unsupported_type",  # HTTP only: an upload whose bytes are not an allowed type
    "rate_limited",
    "unavailable",
    "internal",
)

# Ids are plain strings: letters, digits and _ - . : @, at most 128 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


class Event:
    """Client-to-server events (each answers through its ack)."""

    CONVERSATION_OPEN = "conversation:open"
    CONVERSATION_LIST = "conversation:list"
    MESSAGE_SEND = "message:send"
    MESSAGE_HISTORY = "message:history"
    MESSAGE_READ = "message:read"
    SYNC = "sync"
    TYPING = "typing"
    PRESENCE_QUERY = "presence:query"
    NOTIFICATION_LIST = "notification:list"
    NOTIFICATION_ACK = "notification:ack"
    APPOINTMENT_LIST = "appointment:list"
    CONSULTATION_JOIN = "consultation:join"
    CONSULTATION_END = "consultation:end"
    TRANSCRIPT_APPEND = "transcript:append"
    TRANSCRIPT_HISTORY = "transcript:history"
    ASSISTANT_ASK = "assistant:ask"
    ASSISTANT_CONFIGURE = "assistant:configure"
    ATTACHMENT_URL = "attachment:url"
    PUSH_REGISTER = "push:register"
    PUSH_UNREGISTER = "push:unregister"
    CONVERSATION_CLAIM = "conversation:claim"
    CONVERSATION_RELEASE = "conversation:release"
    CONVERSATION_TRANSFER = "conversation:transfer"
    INBOX_LIST = "inbox:list"
    INBOX_POOLS = "inbox:pools"
    NOTE_HISTORY = "note:history"
    MESSAGE_EDIT = "message:edit"
    MESSAGE_RETRACT = "message:retract"
    EXPORT_REQUEST = "export:request"
    EXPORT_URL = "export:url"
    ASSISTANT_APPROVE = "assistant:approve"
    SESSION_ME = "session:me"
    SESSION_REFRESH = "session:refresh"


class Push:
    """Server-to-client events (no ack)."""

    MESSAGE_NEW = "message:new"
    MESSAGE_READ = "message:read"
    TYPING = "typing"
    PRESENCE = "presence"
    APPOINTMENT_UPDATED = "appointment:updated"
    NOTIFICATION_NEW = "notification:new"
    NOTIFICATION_READ = "notification:read"
    TRANSCRIPT_NEW = "transcript:new"
    CONSULTATION_ENDED = "consultation:ended"
    # To the uploader's devices: an upload was released or rejected.
    ATTACHMENT_UPDATED = "attachment:updated"
    # To the members of the pools concerned: a pool conversation changed hands.
    INBOX_UPDATED = "inbox:updated"
    # To the clinic's people in a conversation only: a staff-only note.
    NOTE_NEW = "note:new"
    # To every member: a message's sender changed or withdrew it.
    MESSAGE_EDITED = "message:edited"
    MESSAGE_RETRACTED = "message:retracted"
    # To the patient's devices: the export they asked for is built (or failed).
    EXPORT_READY = "export:ready"
    # To the doctor's devices only:
    ASSISTANT_DELTA = "assistant:delta"
    ASSISTANT_DONE = "assistant:done"
    ASSISTANT_SUGGESTION = "assistant:suggestion"
    ASSISTANT_NOTE = "assistant:note"
    ASSISTANT_ERROR = "assistant:error"
    # To every socket of a hub that is shutting down, just before it closes them:
    SERVER_DRAINING = "server:draining"
    # To one socket: its token expires soon (answer session:refresh), or its session
    # ended (the reason, then the hub disconnects it).
    SESSION_EXPIRING = "session:expiring"
    SESSION_ENDED = "session:ended"


class SessionEnd(StrEnum):
    """Why the hub ended a session (``session:ended``'s ``reason``)."""

    EXPIRED = "token_expired"  # its token's exp, plus the grace, passed without a refresh
    REVOKED = "revoked"  # the clinic revoked the person's sessions, or removed them


# Anchored: pydantic searches a pattern anywhere in the string, so "a/b" would pass unanchored.
Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
Seq = Annotated[int, Field(ge=0, le=2**53)]
HISTORY_MAX_LIMIT = 100
SYNC_MAX_MESSAGES = 500
MAX_MEMBERS = 50
MAX_PRESENCE_QUERY = 200


class Payload(BaseModel):
    """Base of every client payload: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Empty(Payload):
    pass


class SessionRefresh(Payload):
    token: Annotated[str, StringConstraints(min_length=1, max_length=16384)]


class ConversationOpen(Payload):
    # The clinic's people name the members; a patient names a pool instead.
    member_ids: Annotated[list[Id], Field(max_length=MAX_MEMBERS)] = Field(default_factory=list)
    appointment_id: Id | None = None
    pool_id: Id | None = None


class ConversationRef(Payload):
    conversation_id: Id


class ConversationTransfer(Payload):
    conversation_id: Id
    to_user: Id | None = None
    to_pool: Id | None = None
    note: Annotated[str, StringConstraints(max_length=1000)] | None = None


class InboxList(Payload):
    pool_id: Id
    state: Literal["unclaimed", "mine", "all"] = "unclaimed"


class OnCallShift(Payload):
    user_id: Id
    start: Annotated[datetime, Field(strict=False)]  # ISO 8601 with its offset
    end: Annotated[datetime, Field(strict=False)]


class PoolPut(Payload):
    """Body of ``PUT /api/v1/pools/{pool_id}`` (a clinic back-end, service key)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    member_ids: Annotated[list[Id], Field(max_length=500)]
    lead_id: Id | None = None
    response_minutes: Annotated[int, Field(ge=1, le=10080)] | None = None
    on_call: Annotated[list[OnCallShift], Field(max_length=200)] = Field(default_factory=list)


MAX_ATTACHMENT_IDS = 20  # the schema's bound; HUB_ATTACHMENTS_PER_MESSAGE is the limit


class MessageSend(Payload):
    conversation_id: Id
    client_id: Id
    body: str = ""  # may be empty when the message carries attachments
    attachment_ids: Annotated[list[Id], Field(max_length=MAX_ATTACHMENT_IDS)] = Field(
        default_factory=list
    )
    # "staff": a note for the clinic's people, never shown to the patient.
    visibility: Literal["all", "staff"] = "all"


Base64Url = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+={0,2}$", max_length=200)]


class WebPushKeys(Payload):
    p256dh: Base64Url
    auth: Base64Url


class WebPushSubscription(Payload):
    """The browser's ``PushSubscription.toJSON()``."""

    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2048)]
    keys: WebPushKeys


Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")]


class PushRegister(Payload):
    kind: Literal["webpush", "fcm"]
    subscription: WebPushSubscription | None = None  # webpush
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None  # fcm
    platform: Literal["android", "ios", "web"] | None = None
    locale: Locale | None = None


class PushUnregister(Payload):
    device_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class AttachmentUrl(Payload):
    attachment_id: Annotated[Id, Field(alias="id")]
    thumbnail: bool = False


class MessageHistory(Payload):
    conversation_id: Id
    before_seq: Seq | None = None
    limit: Annotated[int, Field(ge=1, le=HISTORY_MAX_LIMIT)] = 50


class MessageEdit(Payload):
    conversation_id: Id
    seq: Annotated[int, Field(ge=1, le=2**53)]
    body: Annotated[str, StringConstraints(min_length=1)]


class MessageRetract(Payload):
    conversation_id: Id
    seq: Annotated[int, Field(ge=1, le=2**53)]
    # Why (kept in the record's audit, never shown to the other members).
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class ExportRef(Payload):
    export_id: Annotated[str, StringConstraints(pattern=r"^exp_[0-9a-f]{24}$")]


class ExportCreate(Payload):
    """Body of ``POST /api/v1/exports`` (a clinic back-end, service key)."""

    patient_id: Id


class HoldPut(Payload):
    """Body of ``PUT /api/v1/holds/{hold_id}``: one of ``patient_id`` and
    ``conversation_id``, and why."""

    patient_id: Id | None = None
    conversation_id: Id | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


RetentionDays = Annotated[int, Field(ge=1, le=36500)] | None


class RetentionPut(Payload):
    """Body of ``PUT /api/v1/clinic/retention``: days kept per kind, null for ever;
    a kind left out keeps the hub's setting (``HUB_RETENTION_*``)."""

    messages: RetentionDays = None
    attachments: RetentionDays = None
    transcripts: RetentionDays = None
    assistant: RetentionDays = None
    notifications: RetentionDays = None


# What a back-end may subscribe to (docs/webhooks.md).
WebhookEvent = Literal[
    "message.stored",
    "notification.acked",
    "sms.delivered",
    "sms.failed",
    "consultation.ended",
    "export.ready",
]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)


class WebhookPut(Payload):
    """Body of ``PUT /api/v1/webhooks/{name}``: where to, which events, the signing
    secret (``whsec_<base64>``; made by the hub when absent), and whether payloads may
    carry protected health information (HTTPS URLs only)."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2048)]
    events: Annotated[list[WebhookEvent], Field(min_length=1, max_length=len(WEBHOOK_EVENTS))]
    secret: Annotated[str, StringConstraints(max_length=200)] | None = None
    phi: bool = False


class WebhookRotate(Payload):
    """Body of ``POST /api/v1/webhooks/{name}/rotate``: the new secret, or none for the
    hub to make one."""

    secret: Annotated[str, StringConstraints(max_length=200)] | None = None


class WebhookReplay(Payload):
    ids: (
        Annotated[list[Annotated[str, StringConstraints(max_length=300)]], Field(max_length=1000)]
        | None
    ) = None


class AssistantApprove(Payload):
    """The doctor signs off an assistant note draft (as it is, or as they edited it)."""

    consultation_id: Id
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=20000)] | None = None


class MessageRead(Payload):
    conversation_id: Id
    seq: Seq


class Sync(Payload):
    cursors: Annotated[dict[Id, Seq], Field(max_length=1000)] = Field(default_factory=dict)
    # Per conversation, the highest ``change`` the device has seen: edits and retractions
    # of messages at or below its cursor come back in ``changed``.
    changes: Annotated[dict[Id, Seq], Field(max_length=1000)] = Field(default_factory=dict)
    limit: Annotated[int, Field(ge=1, le=SYNC_MAX_MESSAGES)] = SYNC_MAX_MESSAGES


class Typing(Payload):
    conversation_id: Id
    typing: bool


class PresenceQuery(Payload):
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_PRESENCE_QUERY)]


NOTIFICATION_MAX_LIMIT = 100


class NotificationList(Payload):
    before: Annotated[str, StringConstraints(max_length=300)] | None = None
    limit: Annotated[int, Field(ge=1, le=NOTIFICATION_MAX_LIMIT)] = 20
    unread_only: bool = False


APPOINTMENT_MAX_LIMIT = 200


class AppointmentList(Payload):
    # `from` is a keyword in Python; ISO 8601 on the wire (strict mode needs strict=False).
    from_: Annotated[datetime | None, Field(alias="from", strict=False)] = None
    limit: Annotated[int, Field(ge=1, le=APPOINTMENT_MAX_LIMIT)] = 50


class NotificationAck(Payload):
    ids: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=300)]],
        Field(min_length=1, max_length=NOTIFICATION_MAX_LIMIT),
    ]


P = TypeVar("P", bound=Payload)


MAX_SEGMENT_CHARS = 4000
MAX_QUESTION_CHARS = 2000
TRANSCRIPT_MAX_LIMIT = 1000


class ConsultationJoin(Payload):
    appointment_id: Id


class ConsultationRef(Payload):
    consultation_id: Id


class TranscriptAppend(Payload):
    consultation_id: Id
    client_id: Id
    speaker: Literal["doctor", "patient"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SEGMENT_CHARS)]
    # ISO 8601 from the device's clock (JSON has no date type; strict mode needs this).
    at: Annotated[datetime | None, Field(strict=False)] = None


class TranscriptHistory(Payload):
    consultation_id: Id
    after_seq: Seq = 0
    limit: Annotated[int, Field(ge=1, le=TRANSCRIPT_MAX_LIMIT)] = TRANSCRIPT_MAX_LIMIT


class AssistantAsk(Payload):
    consultation_id: Id
    question: Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS)]


class AssistantConfigure(Payload):
    consultation_id: Id
    auto: bool


class ContactPut(Payload):
    """Body of ``PUT /api/v1/users/{user_id}/contact`` (a clinic back-end, service key)."""

    phone: Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{7,14}$")]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    sms_opt_in: bool

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone such as Europe/Paris") from None
        return value


class UserPut(Payload):
    """Body of ``PUT /api/v1/users/{user_id}`` (a clinic back-end, service key)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    role: Literal["patient", "doctor", "nurse", "staff", "admin"]
    title: Annotated[str, StringConstraints(max_length=100)] | None = None


def parse(schema: type[P], data: Any) -> P:
    """Validate a client payload; raise BadRequest with a short, value-free reason.

    A missing payload counts as ``{}``. The reason names fields, never echoes values:
    a rejected body may be protected health information.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest("payload must be an object")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def ok(**fields: Any) -> dict[str, Any]:
    """A successful ack."""
    return {"ok": True, **fields}


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``, as every timestamp on the wire."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
