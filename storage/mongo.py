"""The MongoDB client (PyMongo's async API) and the indexes the hub relies on."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from hub.core.errors import Unavailable
from storage import names

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000  # the server's error code for a unique index violation

# Every collection the retention policy scans (storage/retention.py) has this one.
BY_AGE = IndexModel([("created_at", ASCENDING)], name="by_age")

# A message store's (messages, staff notes): the guarantees of storage/messages.py.
MESSAGE_INDEXES = [
    # Allocation of `seq` relies on this one: two writers cannot both take a number.
    IndexModel(
        [("conversation_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="seq_unique"
    ),
    # Resends: the same client_id by the same sender is the same message.
    IndexModel(
        [("conversation_id", ASCENDING), ("sender_id", ASCENDING), ("client_id", ASCENDING)],
        unique=True,
        name="client_id_unique",
    ),
    # The retention policy's scan, oldest first.
    BY_AGE,
]

INDEXES: dict[str, list[IndexModel]] = {
    names.CONVERSATIONS: [
        IndexModel([("member_ids", ASCENDING)], name="by_member"),
    ],
    names.MESSAGES: [
        *MESSAGE_INDEXES,
        # sync's `changes`: the messages of a conversation edited or retracted since.
        IndexModel([("conversation_id", ASCENDING), ("change", ASCENDING)], name="by_change"),
    ],
    # Staff-only notes: the same guarantees as messages, in a seq space of their own.
    names.STAFF_NOTES: MESSAGE_INDEXES,
    names.READ_CURSORS: [
        IndexModel(
            [("user_id", ASCENDING), ("conversation_id", ASCENDING)],
            unique=True,
            name="cursor_unique",
        ),
        IndexModel([("conversation_id", ASCENDING), ("seq", DESCENDING)], name="by_conversation"),
    ],
    # appointments and appointment_events are keyed by their own ids (_id): unique already.
    # appointment:list reads a user's, by start.
    names.APPOINTMENTS: [
        IndexModel([("doctor_id", ASCENDING), ("start", ASCENDING)], name="by_doctor_start"),
        IndexModel([("patient_id", ASCENDING), ("start", ASCENDING)], name="by_patient_start"),
    ],
    names.NOTIFICATIONS: [
        IndexModel(
            [("user_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
            name="by_user_newest",
        ),
        IndexModel([("user_id", ASCENDING), ("read_at", ASCENDING)], name="unread_by_user"),
        BY_AGE,
    ],
    # STOP and START arrive with a phone number, not a user.
    names.CONTACTS: [IndexModel([("phone", ASCENDING)], name="by_phone")],
    # The outbox is keyed by what it is about (one per notification): unique by _id.
    # Status callbacks find the row by Twilio's SID.
    names.SMS_OUTBOX: [IndexModel([("sid", ASCENDING)], name="by_sid", sparse=True), BY_AGE],
    names.PUSH_OUTBOX: [BY_AGE],
    names.TRANSCRIPT: [
        IndexModel(
            [("consultation_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="seq_unique"
        ),
        # Appends are idempotent on the device's client_id.
        IndexModel(
            [("consultation_id", ASCENDING), ("client_id", ASCENDING)],
            unique=True,
            name="client_id_unique",
        ),
        BY_AGE,
    ],
    names.ASSISTANT_OUTPUTS: [
        IndexModel(
            [("consultation_id", ASCENDING), ("created_at", ASCENDING)], name="by_consultation"
        ),
        BY_AGE,
    ],
    names.ATTACHMENTS: [
        IndexModel([("conversation_id", ASCENDING)], name="by_conversation"),
        # The daily upload quota: a person's uploads of the last 24 hours.
        IndexModel([("uploader_id", ASCENDING), ("created_at", ASCENDING)], name="by_uploader"),
        # The sweep's and the checker's scans: uploads not carried by a message, oldest first.
        IndexModel([("state", ASCENDING), ("created_at", ASCENDING)], name="by_state_age"),
        BY_AGE,
    ],
    # The GridFS bucket's indexes, as the GridFS specification names them (the hub reads
    # and writes its files itself: storage/attachments.py).
    f"{names.ATTACHMENT_FILES}.chunks": [
        IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True, name="files_id_1_n_1"),
    ],
    f"{names.ATTACHMENT_FILES}.files": [
        IndexModel(
            [("filename", ASCENDING), ("uploadDate", ASCENDING)], name="filename_1_uploadDate_1"
        ),
    ],
    names.MESSAGE_VERSIONS: [
        # Two changes of one message at once: the second to write a version loses.
        IndexModel(
            [("message_id", ASCENDING), ("version", ASCENDING)], unique=True, name="version_unique"
        ),
        IndexModel([("conversation_id", ASCENDING), ("seq", ASCENDING)], name="by_conversation"),
    ],
    names.MESSAGE_EXPIRIES: [
        # sync: a conversation's deletions after a device's change number.
        IndexModel([("conversation_id", ASCENDING), ("change", ASCENDING)], name="by_change"),
    ],
    names.HOLDS: [
        IndexModel([("patient_id", ASCENDING)], name="by_patient", sparse=True),
        IndexModel([("conversation_id", ASCENDING)], name="by_conversation", sparse=True),
    ],
    names.EXPORTS: [IndexModel([("state", ASCENDING), ("created_at", ASCENDING)], name="by_state")],
    f"{names.EXPORT_FILES}.chunks": [
        IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True, name="files_id_1_n_1"),
    ],
    names.WEBHOOK_OUTBOX: [
        IndexModel([("state", ASCENDING), ("due", ASCENDING)], name="by_state_due"),
        IndexModel([("webhook", ASCENDING), ("state", ASCENDING)], name="by_webhook"),
        BY_AGE,
    ],
    names.PUSH_DEVICES: [IndexModel([("user_id", ASCENDING)], name="by_user")],
    names.INBOX: [IndexModel([("pool_id", ASCENDING), ("owner_id", ASCENDING)], name="by_pool")],
    names.AUDIT: [
        IndexModel([("consultation_id", ASCENDING), ("at", ASCENDING)], name="by_consultation"),
        IndexModel([("actor_id", ASCENDING), ("at", ASCENDING)], name="by_actor"),
        IndexModel([("attachment_id", ASCENDING)], name="by_attachment", sparse=True),
        # The admin's audit export of a conversation.
        IndexModel(
            [("conversation_id", ASCENDING), ("at", ASCENDING)],
            name="by_conversation",
            sparse=True,
        ),
    ],
}


@contextmanager
def mongo_errors() -> Iterator[None]:
    """Turn PyMongo's errors into the hub's: whatever fails in MongoDB (down, timed
    out, refused) is ``Unavailable`` to the caller, with the cause chained. Errors a
    caller handles itself (a duplicate key) are caught inside the block."""
    try:
        yield
    except PyMongoError as exc:
        raise Unavailable() from exc


def connect(url: str, timeout: float) -> AsyncMongoClient[Any]:
    """The hub's client: every operation gives up after ``timeout`` seconds.

    ``timeoutMS`` bounds server selection, connection and each operation, so a
    MongoDB that is down turns into an ``unavailable`` answer instead of a hang.
    Dates come back timezone-aware (UTC), as the wire forms expect.
    """
    return AsyncMongoClient(url, **_options(timeout))


def connect_sync(url: str, timeout: float) -> MongoClient[Any]:
    """``connect`` for the Celery workers, which are synchronous: the same options."""
    return MongoClient(url, **_options(timeout))


def _options(timeout: float) -> dict[str, Any]:
    millis = int(timeout * 1000)
    return {
        "timeoutMS": millis,
        "serverSelectionTimeoutMS": millis,
        "connectTimeoutMS": millis,
        "tz_aware": True,
        "appname": "clinic-hub",
    }


def _indexes_version() -> str:
    spec = sorted((c, [sorted(i.document.items()) for i in idx]) for c, idx in INDEXES.items())
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:12]


# Names the indexes below: a clinic whose registry entry carries it has them all (a
# hub that finds another value makes them before it serves the clinic).
INDEXES_VERSION = _indexes_version()


async def ensure_indexes(db: AsyncDatabase[Any]) -> None:
    """Create the indexes; idempotent, safe to run from every hub process at start-up."""
    try:
        for collection, indexes in INDEXES.items():
            await db[collection].create_indexes(indexes)
    except PyMongoError as exc:
        raise Unavailable(f"MongoDB: cannot create indexes: {exc}") from exc


async def ping(db: AsyncDatabase[Any]) -> None:
    await db.command("ping")
