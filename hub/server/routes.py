"""HTTP routes: liveness, readiness, message history, appointment events, contacts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from channels.client import ping as redis_ping
from channels.control import Changed
from channels.fanout import FanoutManager
from handlers.services import Services
from hub.core.appointment_event import parse_event
from hub.core.errors import BadRequest, HubError, NotFound, to_hub_error
from hub.core.office_hours import parse_hours
from hub.core.phone import mask
from hub.core.protocol import ID_PATTERN, ContactPut, MessageHistory, parse
from hub.server import attachments, console, webhooks
from hub.server.appkeys import CONTROL, LISTENERS, ROUTER, SERVICES
from hub.server.tenancy import person_of, service_of
from storage.mongo import ping

log = logging.getLogger("hub.http")

API_PREFIX = "/api/"
HTTP_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_large": 413,
    "unsupported_type": 415,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}
# aiohttp's own refusals (no route, wrong method, body over client_max_size), in the
# protocol's words.
_AIOHTTP_REFUSALS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "bad request"),
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
    413: ("too_large", "the request body is too large"),
}


def error_response(error: HubError) -> web.Response:
    return web.json_response(error.to_wire(), status=HTTP_STATUS[error.code])


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of an ``/api/`` route that is not a success is the protocol's
    ``{ok: false, error: {code, message}}``, with the matching status: the routes'
    own errors, unknown routes, wrong methods and bodies over the size limit alike.
    An unexpected error is logged with its type and answered ``internal``."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _AIOHTTP_REFUSALS.get(exc.status, ("bad_request", exc.reason))
        response = web.json_response(
            {"ok": False, "error": {"code": code, "message": message}}, status=exc.status
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        if not isinstance(exc, HubError):
            log.error(
                "%s %s failed: %s", request.method, request.path, type(exc).__name__, exc_info=exc
            )
        return error_response(to_hub_error(exc))


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers. Says nothing about dependencies."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when MongoDB and Redis answer, 503 naming the ones that do not."""
    services = request.app[SERVICES]
    timeout = min(services.settings.mongo_timeout, services.settings.redis_timeout, 2.0)

    async def check(name: str, probe: Any) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(probe, timeout)
        except Exception as exc:  # any failure means not ready; the type says which
            return name, type(exc).__name__
        return name, None

    listeners = request.app[LISTENERS]
    results = list(
        await asyncio.gather(
            check("mongodb", ping(services.db)), check("redis", redis_ping(services.redis))
        )
    )
    results += [
        ("appointments_stream", None if listeners.stream.alive() else "not reading"),
        ("appointments_channel", None if listeners.channel.alive() else "not subscribed"),
        ("socketio_fanout", None if _fanout(services).listening() else "not subscribed"),
        ("control_channel", None if request.app[CONTROL].listener.alive() else "not subscribed"),
    ]
    if request.app[ROUTER].draining:
        results.append(("draining", "shutting down"))
    failing = {name: reason for name, reason in results if reason}
    body: dict[str, Any] = {
        "status": "unavailable" if failing else "ready",
        "checks": {
            name: ("ok" if reason is None else f"failing: {reason}") for name, reason in results
        },
    }
    # Shared by every hub, so reported, not failed on: a backlog is no reason to take
    # this one out of rotation (it is one of those that would work it off).
    try:
        lag, pending = await asyncio.wait_for(listeners.stream.backlog(), timeout)
        body["appointments_stream"] = {"lag": lag, "pending": pending}
    except Exception as exc:  # reported as unknown; Redis's own check says why
        body["appointments_stream"] = {"error": type(exc).__name__}
    return web.json_response(body, status=503 if failing else 200)


def path_id(request: web.Request, name: str) -> str:
    """An id from the route's path; BadRequest unless it is of the protocol's form."""
    value = request.match_info[name]
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"{name}: invalid")
    return value


async def json_body(request: web.Request) -> object:
    """The request's JSON body; BadRequest if it is not JSON."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body: not JSON") from None


def _fanout(services: Services) -> FanoutManager:
    manager = services.sio.manager
    assert isinstance(manager, FanoutManager)
    return manager


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the state gauges are read now, within a short timeout."""
    services = request.app[SERVICES]
    listeners = request.app[LISTENERS]
    m = services.metrics
    m.listeners_alive.labels("appointments_stream").set(listeners.stream.alive())
    m.listeners_alive.labels("appointments_channel").set(listeners.channel.alive())
    m.listeners_alive.labels("socketio_fanout").set(_fanout(services).listening())
    m.listeners_alive.labels("control").set(request.app[CONTROL].listener.alive())
    try:
        lag, pending = await asyncio.wait_for(
            listeners.stream.backlog(), min(services.settings.redis_timeout, 2.0)
        )
        m.stream_lag.set(lag)
        m.stream_pending.set(pending)
    except Exception:  # stale values would mislead: NaN says "unknown"
        m.stream_lag.set(float("nan"))
        m.stream_pending.set(float("nan"))
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def conversation_messages(request: web.Request) -> web.Response:
    """GET /api/v1/conversations/{id}/messages: the history event over HTTP, same rules."""
    services, principal = await person_of(request)
    query: dict[str, Any] = {"conversation_id": request.match_info["conversation_id"]}
    for name in ("before_seq", "limit"):
        if name in request.query:
            try:
                query[name] = int(request.query[name])
            except ValueError:
                raise BadRequest(f"{name}: must be an integer") from None
    payload = parse(MessageHistory, query)
    await services.conversations.require_member(payload.conversation_id, principal.user_id)
    messages, has_more = await services.messages.history(
        payload.conversation_id, payload.before_seq, payload.limit
    )
    return web.json_response(
        {"ok": True, "messages": [m.to_wire() for m in messages], "has_more": has_more}
    )


async def appointment_event(request: web.Request) -> web.Response:
    """POST /api/v1/events/appointments: one event, authenticated with a service key.

    200 ``{ok, event_id, outcome}`` with outcome applied, duplicate or stale; 400 for an
    event that can never apply (not dead-lettered: the caller hears of it directly).
    """
    services, service = await service_of(request)
    event = parse_event(await request.read())
    result = await services.updates.handle(event)
    log.info("appointment event=%s via http key=%s", event.event_id, service)
    return web.json_response({"ok": True, "event_id": event.event_id, "outcome": result.outcome})


async def put_contact(request: web.Request) -> web.Response:
    """PUT /api/v1/users/{user_id}/contact: phone (E.164), time zone and SMS consent.

    Authenticated with a service key. A STOP from the number is kept whatever the
    back-end says: only the recipient's START lifts it.
    """
    services, service = await service_of(request)
    user_id = path_id(request, "user_id")
    body = await json_body(request)
    contact = parse(ContactPut, body)
    stored = await services.sms_store.put_contact(
        user_id, contact.phone, contact.timezone, contact.sms_opt_in
    )
    log.info("contact of user=%s updated to=%s key=%s", user_id, mask(contact.phone), service)
    return web.json_response({"ok": True, "contact": {**stored, "phone": contact.phone}})


async def put_clinic_hours(request: web.Request) -> web.Response:
    """PUT /api/v1/clinic/hours: time zone, weekly hours, holidays, response time.
    Authenticated with a service key; in force on every hub at once."""
    services, service = await service_of(request)
    body = await json_body(request)
    hours = await services.clinic.put_hours(parse_hours(body))
    await request.app[CONTROL].changed(services, Changed.HOURS)
    log.info("clinic hours updated key=%s", service)
    return web.json_response({"ok": True, "hours": hours.to_wire()})


async def get_clinic_hours(request: web.Request) -> web.Response:
    """GET /api/v1/clinic/hours: what patients are told, for any signed-in user."""
    services, _ = await person_of(request)
    hours = await services.clinic.hours()
    if hours is None:
        raise NotFound("no office hours are set: the clinic counts as always open")
    return web.json_response({"ok": True, "hours": hours.to_wire()})


async def vapid_public_key(request: web.Request) -> web.Response:
    """GET /api/v1/push/vapid-public-key: the application server key a browser
    subscribes with (``pushManager.subscribe({applicationServerKey})``)."""
    key = request.app[SERVICES].settings.push.vapid_public_key
    if key is None:
        raise NotFound("Web Push is not configured on this hub (HUB_VAPID_PRIVATE_KEY)")
    return web.json_response({"ok": True, "key": key})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/events/appointments", appointment_event)
    app.router.add_put("/api/v1/users/{user_id}/contact", put_contact)
    app.router.add_get("/api/v1/push/vapid-public-key", vapid_public_key)
    app.router.add_put("/api/v1/clinic/hours", put_clinic_hours)
    app.router.add_get("/api/v1/clinic/hours", get_clinic_hours)
    webhooks.setup(app)
    attachments.setup(app)
    console.setup(app, app[SERVICES].settings.public_base_url)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/conversations/{conversation_id}/messages", conversation_messages)
