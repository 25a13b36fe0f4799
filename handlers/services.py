"""The long-lived objects a running hub shares: built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import socketio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from channels.client import RedisClient
from channels.presence import Presence
from hub.core.auth import TokenVerifier
from hub.core.metrics import Metrics
from hub.core.rooms import Rooms
from hub.core.settings import Settings
from hub.delivery.appointments import AppointmentUpdates
from storage.appointments import AppointmentStore
from storage.audit import AuditLog
from storage.clinic import ClinicStore
from storage.conversations import ConversationRepository
from storage.directory import Directory
from storage.messages import MessageStore
from storage.notifications import NotificationStore
from storage.pools import PoolStore
from storage.push import PushDevices
from storage.revisions import MessageRevisions
from storage.revocations import Revocations
from storage.service_keys import ServiceKeys
from storage.sms import SmsStore

if TYPE_CHECKING:
    from hub.assistant.assistant import Assistant
    from hub.attachments.attachments import Attachments
    from hub.consultations.consultations import Consultations
    from hub.record.exports import Exports
    from hub.record.retention import Retention
from hub.delivery.closed import ClosedReplies
from hub.delivery.escalation import Escalations
from hub.delivery.fallback import FallbackScheduler
from hub.delivery.inbox import Inbox
from hub.delivery.urgent import UrgentMessages
from hub.delivery.webhooks import Webhooks


@dataclass(slots=True)
class Services:
    """One clinic's: its settings, stores (on its own database), rooms and Redis keys.
    The Socket.IO server, Redis and MongoDB clients, token verifier and metrics are the
    hub's, shared by every clinic."""

    tenant: str
    rooms: Rooms
    settings: Settings
    sio: socketio.AsyncServer
    verifier: TokenVerifier
    mongo: AsyncMongoClient[Any]
    db: AsyncDatabase[Any]
    redis: RedisClient
    conversations: ConversationRepository
    messages: MessageStore
    notes: MessageStore  # staff-only notes, in a store of their own
    revisions: MessageRevisions  # edits and retractions, with the versions they replace
    webhooks: Webhooks  # signed webhooks out to the clinic's other systems
    presence: Presence
    notifications: NotificationStore
    appointments: AppointmentStore
    service_keys: ServiceKeys
    updates: AppointmentUpdates
    sms: FallbackScheduler
    sms_store: SmsStore
    consultations: Consultations
    assistant: Assistant
    attachments: Attachments
    push_devices: PushDevices
    clinic: ClinicStore
    directory: Directory
    pools: PoolStore
    inbox: Inbox
    escalations: Escalations
    urgent: UrgentMessages
    audit: AuditLog
    revocations: Revocations
    closed_replies: ClosedReplies
    exports: Exports
    retention: Retention
    metrics: Metrics
