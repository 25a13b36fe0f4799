"""Each clinic's services: built once per tenant by the app factory, on its own database.

What the hub shares between clinics (the Socket.IO server, the MongoDB and Redis
clients, the token verifier, metrics, the Celery app) is made once and passed in; the
rest (stores and their caches, presence, appointment listeners, delivery, exports,
retention) is made per clinic, with the clinic's settings (``Settings.for_tenant``),
its database (``storage.tenants``), and its rooms and Redis keys. Nothing built for
one clinic holds a reference to another's.

The HTTP routes ask here which clinic a request is for: the one its service key, its
person's token or its signed link names (``service_of``, ``person_of``, ``link_clinic``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import socketio
from aiohttp import web
from celery import Celery
from pymongo import AsyncMongoClient

from channels.client import RedisClient
from channels.presence import Presence
from channels.versions import ConsultationVersions
from handlers.services import Services
from hub.assistant.assistant import Assistant
from hub.assistant.model import OllamaStream
from hub.attachments.attachments import Attachments
from hub.consultations.cache import ConsultationCache
from hub.consultations.consultations import Consultations
from hub.core.auth import Principal, TokenVerifier, bearer_token, service_principal
from hub.core.errors import Forbidden, Unauthorized
from hub.core.metrics import Metrics
from hub.core.protocol import Push
from hub.core.records import Attachment
from hub.core.rooms import Rooms
from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT, Tenant
from hub.core.urgent import UrgentPhrases
from hub.delivery.appointments import AppointmentUpdates
from hub.delivery.closed import ClosedReplies
from hub.delivery.escalation import Escalations
from hub.delivery.fallback import FallbackScheduler
from hub.delivery.inbox import Inbox
from hub.delivery.urgent import UrgentMessages
from hub.delivery.webhooks import Webhooks
from hub.record.exports import Exports
from hub.record.retention import Retention
from hub.server.appkeys import SERVICES, TENANTS
from storage import names
from storage.appointments import AppointmentStore
from storage.attachments import AttachmentStore
from storage.audit import AuditLog
from storage.clinic import ClinicStore
from storage.consultations import ConsultationStore
from storage.conversations import ConversationRepository
from storage.directory import Directory
from storage.exports import ExportStore
from storage.inbox import InboxStore
from storage.messages import MessageStore
from storage.notifications import NotificationStore
from storage.pools import PoolStore
from storage.push import PushDevices
from storage.retention import RetentionStore
from storage.revisions import MessageRevisions
from storage.revocations import Revocations
from storage.service_keys import KEY_PREFIX, ServiceKeys, key_tenant
from storage.sms import SmsStore
from storage.tenants import tenant_database
from storage.webhooks import WebhookStore


@dataclass(frozen=True, slots=True)
class Shared:
    """What every clinic of the hub uses alike."""

    settings: Settings  # the hub's, before any clinic's own values
    sio: socketio.AsyncServer
    verifier: TokenVerifier
    mongo: AsyncMongoClient[Any]
    redis: RedisClient
    celery: Celery
    metrics: Metrics
    urgent_phrases: UrgentPhrases  # the hub's (HUB_URGENT_PHRASES_FILE), read once


def build_services(shared: Shared, own: Tenant) -> Services:
    """Clinic ``own``'s services, with its own settings."""
    tenant = own.tenant_id
    settings = shared.settings.with_clinic(own)
    sio, redis, metrics = shared.sio, shared.redis, shared.metrics
    rooms = Rooms(tenant)
    db = tenant_database(shared.mongo, settings.mongodb_db, tenant)
    pools = PoolStore(db)
    audit = AuditLog(db)
    inbox_routes = InboxStore(db)
    conversations = ConversationRepository(db, inbox=inbox_routes, pools=pools)
    notifications = NotificationStore(db)
    appointments = AppointmentStore(db, conversations, metrics)
    presence = Presence(redis, uuid.uuid4().hex, settings.presence_ttl, tenant=tenant)
    consultations = Consultations(
        appointments,
        ConsultationStore(db),
        ConsultationCache(
            ConsultationVersions(redis, tenant), settings.assistant.cached_consultations, metrics
        ),
    )
    push_devices = PushDevices(db)
    clinic = ClinicStore(db)
    directory = Directory(db)
    messages = MessageStore(db, metrics=metrics, timeout=settings.mongo_timeout)
    notes = MessageStore(
        db, metrics=metrics, timeout=settings.mongo_timeout, collection=names.STAFF_NOTES
    )
    sms = FallbackScheduler(settings, shared.celery, presence, metrics, push_devices, tenant=tenant)

    async def notify(room: str, event: str, data: dict[str, Any]) -> None:
        await sio.emit(event, data, room=room)

    async def attachment_changed(attachment: Attachment) -> None:
        await sio.emit(
            Push.ATTACHMENT_UPDATED,
            {"attachment": attachment.to_wire()},
            room=rooms.user(attachment.uploader_id),
        )

    attachment_store = AttachmentStore(db)
    webhooks = Webhooks(
        WebhookStore(db),
        settings.webhook_timeout,
        settings.webhook_first_retry,
        settings.webhook_give_up_after,
        metrics,
    )
    attachments = Attachments(
        settings.attachments,
        settings.attachment_url_key,
        settings.public_base_url,
        attachment_store,
        conversations,
        attachment_changed,
        metrics,
        embedded=settings.embedded,
        tenant=tenant,
    )
    return Services(
        tenant=tenant,
        rooms=rooms,
        settings=settings,
        sio=sio,
        verifier=shared.verifier,
        mongo=shared.mongo,
        db=db,
        redis=redis,
        conversations=conversations,
        messages=messages,
        notes=notes,
        presence=presence,
        notifications=notifications,
        appointments=appointments,
        service_keys=ServiceKeys(db, tenant),
        updates=AppointmentUpdates(sio, appointments, sms, directory, rooms),
        sms=sms,
        sms_store=SmsStore(db),
        consultations=consultations,
        assistant=Assistant(
            settings.assistant,
            consultations,
            sio,
            OllamaStream(settings.assistant),
            presence,
            metrics=metrics,
            rooms=rooms,
        ),
        attachments=attachments,
        revisions=MessageRevisions(db, audit),
        webhooks=webhooks,
        audit=audit,
        revocations=Revocations(db),
        exports=Exports(
            settings.record,
            settings.sms.clinic_name,
            ExportStore(db),
            attachment_store,
            directory,
            attachments,
            notify,
            audit,
            webhooks,
            metrics,
            rooms,
        ),
        retention=Retention(settings.record, RetentionStore(db, attachment_store), audit, metrics),
        push_devices=push_devices,
        clinic=clinic,
        directory=directory,
        pools=pools,
        urgent=UrgentMessages(
            shared.urgent_phrases,
            settings.urgent_reply,
            settings.sms.clinic_name,
            messages,
            inbox_routes,
            pools,
            directory,
            sms,
            audit,
        ),
        escalations=Escalations(
            sio, inbox_routes, pools, clinic, directory, notifications, audit, rooms
        ),
        inbox=Inbox(
            sio,
            conversations,
            inbox_routes,
            pools,
            directory,
            messages,
            audit,
            settings.sms.clinic_name,
            metrics,
            rooms,
        ),
        closed_replies=ClosedReplies(
            clinic, messages, settings.closed_reply, settings.sms.clinic_name
        ),
        metrics=metrics,
    )


async def service_of(request: web.Request) -> tuple[Services, str]:
    """The clinic of the service key the request carries, and the key's name;
    Unauthorized without a valid one. The key names its clinic and is checked in that
    clinic's database only."""
    key = bearer_token(request.headers.get("Authorization"))
    services = request.app[TENANTS].get(key_tenant(key))
    if services is None:
        raise Unauthorized("unknown or revoked service key")
    return services, await services.service_keys.verify(key)


async def person_of(request: web.Request) -> tuple[Services, Principal]:
    """The clinic and person of the bearer token the request carries; Unauthorized
    without a valid one, or one issued before the clinic revoked the person's
    sessions. The token's provider names the clinic, never the request."""
    verifier = request.app[SERVICES].verifier
    principal = await verifier.verify(bearer_token(request.headers.get("Authorization")))
    services = request.app[TENANTS].get(principal.tenant)
    if services is None:  # suspended or removed since the token was checked
        raise Unauthorized("invalid token: no such clinic on this hub")
    if await services.revocations.refuses(principal.user_id, principal.issued_at):
        raise Unauthorized("session revoked: sign in again")
    return services, principal


async def clinic_actor(request: web.Request) -> tuple[Services, str]:
    """The clinic and the actor of a request made for the clinic: its back-end (a
    service key; the actor is ``system:service:<name>``) or one of its admins (a
    token). Unauthorized without valid credentials, Forbidden for anyone else."""
    credential = bearer_token(request.headers.get("Authorization")) or ""
    if credential.startswith(f"{KEY_PREFIX}."):
        services, name = await service_of(request)
        return services, service_principal(name)
    services, principal = await person_of(request)
    if principal.role != "admin":
        raise Forbidden("for the clinic's back-end (a service key) or an admin")
    return services, principal.user_id


def clinic_in_url(request: web.Request) -> Services | None:
    """The clinic the URL's ``tenant`` parameter names (``default`` without one); None
    for one the hub does not serve. Only for URLs whose signature covers the parameter:
    the hub's signed links, and Twilio's requests."""
    return request.app[TENANTS].get(request.query.get("tenant", DEFAULT_TENANT))


def link_clinic(request: web.Request) -> Services:
    """The clinic a signed link names. The link's signature covers it, so a changed
    name fails that clinic's check."""
    services = clinic_in_url(request)
    if services is None:
        raise Unauthorized("the link's signature does not match")
    return services
