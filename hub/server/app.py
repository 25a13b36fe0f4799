"""The application factory: one aiohttp app with Socket.IO attached and its resources.

Resources open in ``cleanup_ctx`` generators, in this order, and close in reverse:
MongoDB (indexes checked) -> Redis -> the message writer -> Socket.IO background work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import socketio
from aiohttp import web
from aiohttp.typedefs import Handler

import handlers
from channels import client as redis_client
from channels import fanout
from channels.appointments import ChannelListener, StreamConsumer
from channels.names import SOCKETIO_CHANNEL
from channels.presence import Presence
from channels.versions import ConsultationVersions
from handlers.base import Router
from handlers.services import Services
from hub.assistant.assistant import Assistant
from hub.assistant.model import OllamaStream
from hub.attachments.attachments import Attachments
from hub.compat import engineio as engineio_compat
from hub.compat import socketio as socketio_compat
from hub.consultations.cache import ConsultationCache
from hub.consultations.consultations import Consultations
from hub.core import jsonwire, logs
from hub.core.auth import TokenVerifier
from hub.core.errors import Unavailable
from hub.core.metrics import Metrics
from hub.core.protocol import SOCKETIO_PATH, Push
from hub.core.records import Attachment
from hub.core.rooms import user_room
from hub.core.settings import Settings
from hub.core.tasks import cancel_and_wait, every
from hub.core.urgent import UrgentPhrases
from hub.delivery.appointments import AppointmentUpdates
from hub.delivery.closed import ClosedReplies
from hub.delivery.escalation import CHECK_EVERY, Escalations
from hub.delivery.fallback import FallbackScheduler
from hub.delivery.inbox import Inbox
from hub.delivery.urgent import UrgentMessages
from hub.delivery.webhooks import Webhooks
from hub.record.exports import Exports
from hub.record.retention import Retention
from hub.server import fhir as fhir_routes
from hub.server import record as record_routes
from hub.server import routes, subscriptions
from hub.server.appkeys import LISTENERS, ROUTER, SERVICES, Listeners
from storage import mongo, names
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
from storage.service_keys import ServiceKeys
from storage.sms import SmsStore
from storage.webhooks import WebhookStore
from workers.celery_app import create_celery

log = logging.getLogger("hub.app")

CLOSE_DRAIN_SECONDS = 2.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
# A background loop stops at its next await: within one Redis command's timeout.
TASK_STOP_SECONDS = 10.0


def create_app(settings: Settings, *, socketio_channel: str | None = None) -> web.Application:
    """Build the hub for ``settings``; MongoDB and Redis URLs must be resolved already.

    ``socketio_channel`` overrides the Redis channel of the cross-process fan-out
    (tests give each hub group its own).
    """
    if settings.mongodb_url is None or settings.redis_url is None:
        raise ValueError("create_app needs resolved MongoDB and Redis URLs")
    metrics = Metrics()
    manager = fanout.FanoutManager(
        settings.redis_url,
        settings.redis_timeout,
        channel=socketio_channel or SOCKETIO_CHANNEL,
        messages=metrics.fanout_messages,
        batches=metrics.fanout_batches,
        json=jsonwire,
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        serializer=socketio_compat.HubPacket,
        json=jsonwire,
        cors_allowed_origins=allowed_origins(settings),
        max_http_buffer_size=settings.max_frame_bytes,
        ping_interval=25,
        ping_timeout=20,
        logger=logs.library_logger("socketio.server"),
        engineio_logger=logs.library_logger("engineio.server"),
    )
    mongo_client = mongo.connect(settings.mongodb_url, settings.mongo_timeout)
    db = mongo_client[settings.mongodb_db]
    redis = redis_client.connect(settings.redis_url, settings.redis_timeout)
    pools = PoolStore(db)
    audit = AuditLog(db)
    inbox_routes = InboxStore(db)
    conversations = ConversationRepository(db, inbox=inbox_routes, pools=pools)
    notifications = NotificationStore(db)
    appointments = AppointmentStore(db, conversations, metrics)
    presence = Presence(redis, uuid.uuid4().hex, settings.presence_ttl)
    consultations = Consultations(
        appointments,
        ConsultationStore(db),
        ConsultationCache(
            ConsultationVersions(redis), settings.assistant.cached_consultations, metrics
        ),
    )
    push_devices = PushDevices(db)
    clinic = ClinicStore(db)
    directory = Directory(db)
    messages = MessageStore(db, metrics=metrics, timeout=settings.mongo_timeout)
    notes = MessageStore(
        db, metrics=metrics, timeout=settings.mongo_timeout, collection=names.STAFF_NOTES
    )
    sms = FallbackScheduler(settings, create_celery(settings), presence, metrics, push_devices)

    async def notify(room: str, event: str, data: dict[str, Any]) -> None:
        await sio.emit(event, data, room=room)

    async def attachment_changed(attachment: Attachment) -> None:
        await sio.emit(
            Push.ATTACHMENT_UPDATED,
            {"attachment": attachment.to_wire()},
            room=user_room(attachment.uploader_id),
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
    )

    services = Services(
        settings=settings,
        sio=sio,
        verifier=TokenVerifier(settings),
        mongo=mongo_client,
        db=db,
        redis=redis,
        conversations=conversations,
        messages=messages,
        notes=notes,
        presence=presence,
        notifications=notifications,
        appointments=appointments,
        service_keys=ServiceKeys(db),
        updates=AppointmentUpdates(sio, appointments, sms, directory),
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
        ),
        attachments=attachments,
        revisions=MessageRevisions(db),
        webhooks=webhooks,
        audit=audit,
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
        ),
        retention=Retention(settings.record, RetentionStore(db, attachment_store), audit, metrics),
        push_devices=push_devices,
        clinic=clinic,
        directory=directory,
        pools=pools,
        urgent=UrgentMessages(
            UrgentPhrases.from_file(settings.urgent_phrases_file),
            settings.urgent_reply,
            settings.sms.clinic_name,
            messages,
            inbox_routes,
            pools,
            directory,
            sms,
            audit,
        ),
        escalations=Escalations(sio, inbox_routes, pools, clinic, directory, notifications, audit),
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
        ),
        closed_replies=ClosedReplies(
            clinic, messages, settings.closed_reply, settings.sms.clinic_name
        ),
        metrics=metrics,
    )
    router = Router(services)
    handlers.register(router)

    app = web.Application(
        client_max_size=settings.max_frame_bytes,
        middlewares=[_request_ids, _refuse_new_sockets_while_draining, routes.api_errors],
    )
    app[SERVICES] = services
    app[ROUTER] = router
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    socketio_compat.refuse_malformed_frames(sio, metrics)
    engineio_compat.bound_outgoing_queues(
        sio, settings.socket_queue_packets, settings.socket_queue_bytes, metrics
    )
    engineio_compat.end_long_polls_on_disconnect(sio)
    routes.setup(app)
    record_routes.setup(app)
    fhir_routes.setup(app)
    subscriptions.setup(app)
    app[LISTENERS] = Listeners(
        stream=StreamConsumer(
            redis,
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            services.updates.handle,
            claim_after=settings.stream_claim_after,
            # A blocking read must return before the client's socket timeout fires.
            block=min(1.0, settings.redis_timeout / 2),
        ),
        channel=ChannelListener(
            redis, services.updates.handle, poll=min(1.0, settings.redis_timeout / 2)
        ),
    )
    app.cleanup_ctx.extend(
        [
            _mongodb,
            _identity,
            _redis,
            _message_writer,
            _sms_scheduler,
            _attachments,
            _escalations,
            _record,
            _assistant,
            _socketio,
            _appointment_listeners,
        ]
    )
    app.on_shutdown.append(_close_sockets)
    return app


def allowed_origins(settings: Settings) -> str | Callable[[str, dict[str, Any]], bool]:
    """Which browser origins may open a Socket.IO connection: ``*`` only when
    ``HUB_CORS_ORIGINS`` says so; otherwise the configured origins, the hub's public
    origin (``HUB_PUBLIC_URL``) and the page's own origin (the console, served by
    the hub). A client that sends no ``Origin`` (a mobile app, a back-end) is not a
    browser page and is not checked. python-engineio reads an empty list as "do not
    check", which accepted any origin.
    """
    if "*" in settings.cors_origins:
        return "*"
    public = urlsplit(settings.public_base_url)
    allowed = {*settings.cors_origins, f"{public.scheme}://{public.netloc}"}

    def check(origin: str, environ: dict[str, Any]) -> bool:
        if origin in allowed:
            return True
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        return origin == own

    return check


@web.middleware
async def _request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every log line of an HTTP request carries its id (a proxy's X-Request-Id, if
    it is a plain token of letters, digits, ``.``, ``_`` and ``-`` such as a UUID,
    else a new one), and the response says which."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
    token = logs.request_id.set(rid)
    try:
        response = await handler(request)
    finally:
        logs.request_id.reset(token)
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response


async def drain(app: web.Application, site: web.BaseSite, timeout: float) -> None:
    """The first part of a graceful stop, within ``timeout`` seconds in all.

    In order: readiness turns 503 and new Socket.IO connections are refused with 503
    (the listening socket stays open for health checks, so the load balancer sees the
    503 and sends new clients to the other hubs; a refused client retries); tell this
    hub's sockets ``server:draining`` and wait for each one's ack of it, so that every
    event sent before has been read; answer new events ``unavailable`` (the client
    sends again after reconnecting, and ``client_id`` makes that safe) while the ones
    in flight finish and ack; then close the sockets' transports. Clients take that
    as a lost connection and reconnect, to another hub; and stop listening. The
    caller then runs the app's cleanup, which flushes the message writer and closes
    storage.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    router, sio = app[ROUTER], app[SERVICES].sio
    router.draining = True
    notice = {"reconnect": True, "message": "this hub is restarting: reconnecting"}
    # Each socket acks the notice: everything its client sent before has then been
    # read, so an event already on its way is answered, not lost with the transport.
    # This process's sockets only (the other hubs are not stopping), each waited for
    # at most a quarter of the budget.
    wait = max(0.1, (deadline - loop.time()) / 4)
    acks = await asyncio.gather(
        *(
            sio.call(Push.SERVER_DRAINING, notice, to=sid, timeout=wait, ignore_queue=True)
            for sid in list(router.connections)
        ),
        return_exceptions=True,
    )
    unacked = sum(isinstance(ack, BaseException) for ack in acks)
    if unacked:
        log.warning(
            "shutdown: %d of %d sockets did not ack the draining notice in time", unacked, len(acks)
        )
    in_flight = router.in_flight
    if not await router.drain(max(0.0, (deadline - loop.time()) / 2)):
        log.warning("shutdown: %d events still in flight", router.in_flight)
    log.info(
        "shutdown: %d events finished in flight, closing %d sockets",
        in_flight,
        len(router.connections),
    )
    await _close_sockets(app, reconnect=True)
    await site.stop()


@web.middleware
async def _refuse_new_sockets_while_draining(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """While draining, a new Engine.IO session is answered 503: the client treats it
    as a failed attempt and tries again, through the load balancer, on another hub
    (a refused Socket.IO CONNECT would leave the official clients disconnected).
    Requests of sessions already open go on."""
    if (
        request.app[ROUTER].draining
        and "sid" not in request.query
        and request.path.startswith(f"/{SOCKETIO_PATH}/")
    ):
        return web.json_response(
            Unavailable("this hub is shutting down: connect to another").to_wire(), status=503
        )
    return await handler(request)


async def _close_sockets(app: web.Application, *, reconnect: bool = False) -> None:
    await engineio_compat.close_sockets(
        app[SERVICES].sio.eio, CLOSE_DRAIN_SECONDS, reconnect=reconnect
    )


async def _mongodb(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    await mongo.ensure_indexes(services.db)
    yield
    await services.mongo.close()


async def _identity(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client that fetches identity providers' keys, closed at the end."""
    yield
    await app[SERVICES].verifier.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    yield
    # Bounded: closing connections to a Redis that went away must not hold the shutdown.
    closing = asyncio.ensure_future(services.redis.aclose())
    await asyncio.wait({closing}, timeout=services.settings.redis_timeout)


async def _message_writer(app: web.Application) -> AsyncIterator[None]:
    stores = [app[SERVICES].messages, app[SERVICES].notes]
    for store in stores:
        store.start()
    yield
    for store in stores:
        await store.close()


async def _sms_scheduler(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    if services.settings.sms.driver == "log":
        log.warning(
            "SMS: no Twilio credentials (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN): "
            "SMS are recorded and logged, nothing is really sent"
        )

    async def sweep() -> None:
        await services.sms.sweep(services.sms_store)

    sweeper = asyncio.create_task(
        every(min(60.0, services.sms.sweep_after / 4), sweep, "sms outbox sweep"), name="sms-sweep"
    )
    yield
    await cancel_and_wait([sweeper], TASK_STOP_SECONDS)
    await services.sms.close(timeout=2.0)


async def _attachments(app: web.Application) -> AsyncIterator[None]:
    """Checks of uploads whose turn came (the scanner back, a hub gone mid-check),
    and the sweep of orphaned uploads, in every hub (each claims what it does)."""
    attachments = app[SERVICES].attachments
    if attachments.scanner is not None and settings_has_links(app):
        log.info("%s", attachments.describe())
    else:
        log.warning("%s", attachments.describe())
    settings = attachments.settings
    tasks = [
        asyncio.create_task(
            every(
                max(1.0, settings.retry_after / 2), attachments.check_waiting, "attachment checks"
            ),
            name="attachment-checks",
        ),
        asyncio.create_task(
            every(
                min(3600.0, max(60.0, settings.orphan_after / 4)),
                _sweep(attachments),
                "attachment sweep",
            ),
            name="attachment-sweep",
        ),
    ]
    yield
    await cancel_and_wait(tasks, TASK_STOP_SECONDS)
    await attachments.close()


def settings_has_links(app: web.Application) -> bool:
    return app[SERVICES].settings.attachment_url_key is not None


def _sweep(attachments: Attachments) -> Callable[[], Awaitable[None]]:
    async def sweep() -> None:
        await attachments.sweep()

    return sweep


async def _escalations(app: web.Application) -> AsyncIterator[None]:
    """The response-time promise, checked every minute by every hub (each escalation
    is claimed, so once)."""
    escalations = app[SERVICES].escalations

    async def check() -> None:
        await escalations.run_once()

    task = asyncio.create_task(every(CHECK_EVERY, check, "inbox escalations"), name="escalations")
    yield
    await cancel_and_wait([task], TASK_STOP_SECONDS)


async def _record(app: web.Application) -> AsyncIterator[None]:
    """Exports built by whichever hub is free, and the retention policy's runs (one
    hub at a time; each hub looks every few minutes whether one is due)."""
    services = app[SERVICES]

    async def retain() -> None:
        await services.retention.run_if_due()

    tasks = [
        asyncio.create_task(services.exports.run_forever(), name="exports"),
        asyncio.create_task(services.webhooks.run_forever(), name="webhooks"),
        asyncio.create_task(
            every(min(300.0, services.settings.record.retention_every), retain, "retention"),
            name="retention",
        ),
    ]
    yield
    await cancel_and_wait(tasks, TASK_STOP_SECONDS)
    await services.webhooks.close()


async def _assistant(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SERVICES].assistant.close()  # cancels generations: their streams close
    await app[SERVICES].consultations.close()


async def _appointment_listeners(app: web.Application) -> AsyncIterator[None]:
    listeners = app[LISTENERS]
    tasks = [
        asyncio.create_task(listeners.stream.run(), name="appointments-stream"),
        asyncio.create_task(listeners.channel.run(), name="appointments-channel"),
    ]
    yield
    await cancel_and_wait(tasks, TASK_STOP_SECONDS)


async def _socketio(app: web.Application) -> AsyncIterator[None]:
    services, router = app[SERVICES], app[ROUTER]
    manager = services.sio.manager
    assert isinstance(manager, fanout.FanoutManager)
    manager.start()  # readiness waits for the subscription

    async def refresh_presence() -> None:
        await services.presence.refresh(
            (c.user_id, c.sid) for c in list(router.connections.values())
        )

    heartbeat = asyncio.create_task(
        every(services.presence.refresh_interval, refresh_presence, "presence refresh"),
        name="presence-heartbeat",
    )
    yield
    await cancel_and_wait([heartbeat], TASK_STOP_SECONDS)
    await router.tasks.close(timeout=2.0)
    await services.sio.shutdown()
    await manager.close()
