"""The application factory: one aiohttp app with Socket.IO attached and its resources.

The Socket.IO server, the store clients, the token check and the metrics are made
once; every clinic the hub serves gets services of its own on top of them
(``hub.server.tenancy``), started and stopped as the platform's registry says
(``hub.server.clinics``). Resources open in ``cleanup_ctx`` generators, in this order,
and close in reverse: MongoDB -> Redis -> the clinics (each one's indexes checked, its
message writers and background work) -> Socket.IO background work -> the control
channel.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import socketio
from aiohttp import web
from aiohttp.typedefs import Handler

import handlers
from channels import client as redis_client
from channels import fanout
from channels.names import CONTROL_CHANNEL, SOCKETIO_CHANNEL
from handlers.base import Router
from hub.compat import engineio as engineio_compat
from hub.compat import socketio as socketio_compat
from hub.core import jsonwire, logs
from hub.core.auth import TokenVerifier
from hub.core.errors import Unavailable
from hub.core.metrics import Metrics
from hub.core.protocol import SOCKETIO_PATH, Push
from hub.core.settings import Settings
from hub.core.tasks import cancel_and_wait, every
from hub.core.urgent import UrgentPhrases
from hub.server import fhir as fhir_routes
from hub.server import people as people_routes
from hub.server import platform, routes, subscriptions
from hub.server import record as record_routes
from hub.server.appkeys import CLINICS, CONTROL, LISTENERS, ROUTER, SERVICES, TENANTS
from hub.server.clinics import TASK_STOP_SECONDS, ClinicSet, default_clinic
from hub.server.control import ControlBus
from hub.server.tenancy import Shared, build_services
from storage import mongo
from storage.clinics import ClinicActivity, ClinicRegistry
from storage.tenants import platform_database
from workers.celery_app import create_celery

log = logging.getLogger("hub.app")

CLOSE_DRAIN_SECONDS = 2.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def create_app(settings: Settings, *, socketio_channel: str | None = None) -> web.Application:
    """Build the hub for ``settings``; MongoDB and Redis URLs must be resolved already.

    ``socketio_channel`` overrides the Redis channel of the cross-process fan-out,
    and with it the control channel's (tests give each hub group its own).
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
        received=metrics.fanout_received,
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
    shared = Shared(
        settings=settings,
        sio=sio,
        verifier=TokenVerifier(settings),
        mongo=mongo.connect(settings.mongodb_url, settings.mongo_timeout),
        # The clinics' stream reader and channel subscription hold two more (clinics.py).
        redis=redis_client.connect(settings.redis_url, settings.redis_timeout),
        celery=create_celery(settings),
        metrics=metrics,
        urgent_phrases=UrgentPhrases.from_file(settings.urgent_phrases_file),
    )
    services = build_services(shared, default_clinic(settings))
    platform_db = platform_database(shared.mongo, settings.mongodb_db)
    tenants = ClinicSet(shared, ClinicRegistry(platform_db), services, ClinicActivity(platform_db))
    shared.verifier.serve(tenants, tenants.issuers)  # the clinics served now, as they change
    router = Router(tenants)
    tenants.router = router
    handlers.register(router)

    app = web.Application(
        client_max_size=settings.max_frame_bytes,
        middlewares=[_request_ids, _refuse_new_sockets_while_draining, routes.api_errors],
    )
    app[SERVICES] = services
    app[TENANTS] = tenants
    app[ROUTER] = router
    control_channel = f"{socketio_channel}:control" if socketio_channel else CONTROL_CHANNEL
    app[CONTROL] = ControlBus(shared.redis, control_channel, router, tenants)
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    socketio_compat.refuse_malformed_frames(sio, metrics)
    engineio_compat.bound_outgoing_queues(
        sio, settings.socket_queue_packets, settings.socket_queue_bytes, metrics
    )
    engineio_compat.end_long_polls_on_disconnect(sio)
    routes.setup(app)
    people_routes.setup(app)
    record_routes.setup(app)
    fhir_routes.setup(app)
    subscriptions.setup(app)
    platform.setup(app)
    app[LISTENERS] = tenants.listeners
    app[CLINICS] = tenants
    app[CONTROL].clinic_changed = app[CLINICS].reload
    app.cleanup_ctx.extend(
        [
            _mongodb,
            _identity,
            _redis,
            _startup_notes,
            _clinics,
            _socketio,
            _control,
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
    yield  # each clinic's indexes are checked as it starts (hub/server/clinics.py)
    await app[SERVICES].mongo.close()


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


async def _startup_notes(app: web.Application) -> AsyncIterator[None]:
    """What an operator must know of this hub's setup, said once at start-up."""
    services = app[SERVICES]
    settings = services.settings
    if settings.sms.driver == "log":
        log.warning(
            "SMS: no Twilio credentials (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN): "
            "SMS are recorded and logged, nothing is really sent"
        )
    attachments = services.attachments
    if attachments.scanner is not None and settings.attachment_url_key is not None:
        log.info("%s", attachments.describe())
    else:
        log.warning("%s", attachments.describe())
    if settings.push.unchecked_origins:
        log.warning(
            "Web Push endpoints of %s are not checked (HUB_PUSH_UNCHECKED_ORIGINS): "
            "for development and tests only",
            ", ".join(settings.push.unchecked_origins),
        )
    yield


async def _clinics(app: web.Application) -> AsyncIterator[None]:
    """Every clinic the registry says to serve, with its background work; a reload
    every 30 s besides the control channel's messages (hub/server/clinics.py)."""
    clinics = app[CLINICS]
    await clinics.start()
    reloads = asyncio.create_task(clinics.reload_forever(), name="clinic-registry")
    yield
    await cancel_and_wait([reloads], TASK_STOP_SECONDS)
    await clinics.close()


async def _control(app: web.Application) -> AsyncIterator[None]:
    """The control channel's listener: revocations and changed settings from any hub."""
    task = asyncio.create_task(app[CONTROL].listener.run(), name="control-channel")
    yield
    await cancel_and_wait([task], TASK_STOP_SECONDS)


async def _socketio(app: web.Application) -> AsyncIterator[None]:
    services, router = app[SERVICES], app[ROUTER]
    manager = services.sio.manager
    assert isinstance(manager, fanout.FanoutManager)
    manager.start()  # readiness waits for the subscription

    async def refresh_presence() -> None:
        by_clinic: dict[str, list[tuple[str, str]]] = {}
        for c in list(router.connections.values()):
            by_clinic.setdefault(c.principal.tenant, []).append((c.user_id, c.sid))
        for tenant, sockets in by_clinic.items():
            services = router.tenants.get(tenant)
            if services is not None:  # else its clinic stopped, and its sockets are ending
                await services.presence.refresh(sockets)

    heartbeat = asyncio.create_task(
        every(services.presence.refresh_interval, refresh_presence, "presence refresh"),
        name="presence-heartbeat",
    )
    yield
    await cancel_and_wait([heartbeat], TASK_STOP_SECONDS)
    await router.tasks.close(timeout=2.0)
    await services.sio.shutdown()
    await manager.close()
