"""FHIR appointment events in: an EHR's (or a FHIR server's) subscription notifications.

``POST /api/v1/fhir/subscription``, authenticated with a service key: the EHR's
Subscription carries it as its channel header (``Authorization: Bearer <key>``).
Handshakes and heartbeats are answered 200 and change nothing. Each event of an
event notification goes the way of every appointment event (applied once, in the
order of its ``meta.lastUpdated``: a duplicate is ``duplicate``, a late one
``stale``); what cannot map goes to the dead-letter stream with its reason. A store
that is down answers 503, so that the EHR delivers the notification again, which is
safe.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from channels.appointments import dead_letter
from hub.core.appointment_event import InvalidEvent
from hub.core.errors import BadRequest
from hub.core.fhir_events import Identifiers, Unmappable, parse_notification
from hub.server.tenancy import service_of

log = logging.getLogger("hub.http")


async def subscription_notification(request: web.Request) -> web.Response:
    services, service = await service_of(request)
    try:
        bundle = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body: not JSON") from None
    settings = services.settings
    notification = parse_notification(
        bundle, Identifiers(settings.fhir_patient_system, settings.fhir_practitioner_system)
    )
    outcomes = []
    for event in notification.events:
        if isinstance(event, Unmappable):
            await dead_letter(
                services.redis, event.entry, event.reason, "fhir", tenant=services.tenant
            )
            outcomes.append({"event": event.event_number, "outcome": "dead_letter"})
            continue
        try:
            result = await services.updates.handle(event)
        except InvalidEvent as exc:  # an impossible transition: never applies
            await dead_letter(
                services.redis,
                event.model_dump(mode="json"),
                exc.message,
                "fhir",
                tenant=services.tenant,
            )
            outcomes.append({"event": event.event_id, "outcome": "dead_letter"})
            continue
        outcomes.append({"event": event.event_id, "outcome": result.outcome})
    log.info(
        "fhir notification type=%s events=%d key=%s",
        notification.type,
        len(notification.events),
        service,
    )
    return web.json_response({"ok": True, "type": notification.type, "events": outcomes})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/fhir/subscription", subscription_notification)
