"""Back-ends' webhook subscriptions over HTTP (service keys): subscribe, list, delete,
the dead deliveries of one, and their replay (hub/delivery/webhooks.py sends them)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from channels.control import Changed
from hub.core.errors import BadRequest, NotFound
from hub.core.protocol import WebhookPut, WebhookReplay, iso, parse
from hub.delivery.webhooks import new_secret, secret_key
from hub.server.appkeys import CONTROL
from hub.server.routes import json_body, path_id
from hub.server.tenancy import service_of

log = logging.getLogger("hub.http")


def _to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    """A subscription as it is shown: never its secret."""
    return {
        "name": doc["_id"],
        "url": doc["url"],
        "events": doc["events"],
        "phi": doc.get("phi", False),
        "updated_at": iso(doc["updated_at"]),
    }


async def put_webhook(request: web.Request) -> web.Response:
    """PUT /api/v1/webhooks/{name}: subscribe (or change a subscription)."""
    services, service = await service_of(request)
    name = path_id(request, "name")
    body = parse(WebhookPut, await json_body(request))
    if body.phi and not body.url.startswith("https://"):
        raise BadRequest("phi: payloads with health information go to HTTPS URLs only")
    secret = body.secret or new_secret()
    try:
        secret_key(secret)
    except ValueError as exc:
        raise BadRequest(f"secret: {exc}") from None
    webhooks = services.webhooks
    stored = await webhooks.store.put(
        name,
        {"url": body.url, "events": sorted(set(body.events)), "secret": secret, "phi": body.phi},
    )
    await request.app[CONTROL].changed(services, Changed.WEBHOOKS)
    log.info("webhook=%s subscribed events=%s key=%s", name, ",".join(stored["events"]), service)
    wire = _to_wire(stored)
    if body.secret is None:
        wire["secret"] = secret  # made here: shown this once
    return web.json_response({"ok": True, "webhook": wire})


async def delete_webhook(request: web.Request) -> web.Response:
    services, _ = await service_of(request)
    webhooks = services.webhooks
    if not await webhooks.store.delete(path_id(request, "name")):
        raise NotFound("no such webhook")
    await request.app[CONTROL].changed(services, Changed.WEBHOOKS)
    return web.json_response({"ok": True})


async def list_webhooks(request: web.Request) -> web.Response:
    services, _ = await service_of(request)
    subscriptions = await services.webhooks.store.all()
    return web.json_response({"ok": True, "webhooks": [_to_wire(s) for s in subscriptions]})


async def dead_deliveries(request: web.Request) -> web.Response:
    """GET /api/v1/webhooks/{name}/dead: deliveries that gave up, oldest first."""
    services, _ = await service_of(request)
    dead = await services.webhooks.store.dead(path_id(request, "name"))
    return web.json_response(
        {
            "ok": True,
            "deliveries": [
                {
                    "id": d["_id"],
                    "type": d["type"],
                    "attempts": d.get("attempts", 0),
                    "last_error": d.get("last_error"),
                    "created_at": iso(d["created_at"]),
                    "dead_at": iso(d["dead_at"]),
                }
                for d in dead
            ],
        }
    )


async def replay(request: web.Request) -> web.Response:
    """POST /api/v1/webhooks/{name}/replay ``{ids?}``: dead deliveries back in the queue."""
    services, service = await service_of(request)
    name = path_id(request, "name")
    body = parse(WebhookReplay, await json_body(request) if request.can_read_body else {})
    count = await services.webhooks.store.replay(name, body.ids)
    log.info("webhook=%s %d dead deliveries replayed key=%s", name, count, service)
    return web.json_response({"ok": True, "replayed": count})


def setup(app: web.Application) -> None:
    app.router.add_put("/api/v1/webhooks/{name}", put_webhook)
    app.router.add_delete("/api/v1/webhooks/{name}", delete_webhook)
    app.router.add_get("/api/v1/webhooks", list_webhooks)
    app.router.add_get("/api/v1/webhooks/{name}/dead", dead_deliveries)
    app.router.add_post("/api/v1/webhooks/{name}/replay", replay)
