"""Back-ends' webhook subscriptions over HTTP (service keys): subscribe, list, delete,
the dead deliveries of one, and their replay (hub/delivery/webhooks.py sends them)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from aiohttp import web

from channels.control import Changed
from hub.core import clock
from hub.core.errors import BadRequest, NotFound
from hub.core.protocol import WebhookPut, WebhookReplay, WebhookRotate, iso, parse
from hub.delivery.webhooks import new_secret, secret_key, signing_secrets
from hub.server.appkeys import CONTROL
from hub.server.routes import json_body, path_id
from hub.server.tenancy import service_of

log = logging.getLogger("hub.http")


def _to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    """A subscription as it is shown: never its secret."""
    wire = {
        "name": doc["_id"],
        "url": doc["url"],
        "events": doc["events"],
        "phi": doc.get("phi", False),
        "updated_at": iso(doc["updated_at"]),
    }
    if len(signing_secrets(doc, clock.now())) > 1:
        wire["previous_secret_until"] = iso(doc["previous_until"])
    return wire


def _secret(given: str | None) -> str:
    """The secret a request names, checked; or a new one the hub makes."""
    secret = given or new_secret()
    try:
        secret_key(secret)
    except ValueError as exc:
        raise BadRequest(f"secret: {exc}") from None
    return secret


def _rotated(before: dict[str, Any] | None, secret: str, overlap: float) -> dict[str, Any]:
    """The secret fields of a subscription whose secret becomes ``secret``: the one it
    replaces signs too for ``overlap`` seconds (one still in its overlap is kept)."""
    fields: dict[str, Any] = {"secret": secret}
    if before is None:
        return fields
    if before["secret"] != secret:
        fields["previous_secret"] = before["secret"]
        fields["previous_until"] = clock.now() + timedelta(seconds=overlap)
    elif before.get("previous_secret"):
        fields["previous_secret"] = before["previous_secret"]
        fields["previous_until"] = before["previous_until"]
    return fields


async def put_webhook(request: web.Request) -> web.Response:
    """PUT /api/v1/webhooks/{name}: subscribe (or change a subscription)."""
    services, service = await service_of(request)
    name = path_id(request, "name")
    body = parse(WebhookPut, await json_body(request))
    if body.phi and not body.url.startswith("https://"):
        raise BadRequest("phi: payloads with health information go to HTTPS URLs only")
    secret = _secret(body.secret)
    webhooks = services.webhooks
    overlap = services.settings.webhook_secret_overlap
    stored = await webhooks.store.put(
        name,
        {
            "url": body.url,
            "events": sorted(set(body.events)),
            "phi": body.phi,
            **_rotated(await webhooks.store.subscription(name), secret, overlap),
        },
    )
    await request.app[CONTROL].changed(services, Changed.WEBHOOKS)
    log.info("webhook=%s subscribed events=%s key=%s", name, ",".join(stored["events"]), service)
    wire = _to_wire(stored)
    if body.secret is None:
        wire["secret"] = secret  # made here: shown this once
    return web.json_response({"ok": True, "webhook": wire})


async def rotate_secret(request: web.Request) -> web.Response:
    """POST /api/v1/webhooks/{name}/rotate ``{secret?}``: a new signing secret (made by
    the hub when absent, and then shown this once); the old one signs too for
    ``HUB_WEBHOOK_SECRET_OVERLAP``, so the receiver can switch without losing one."""
    services, service = await service_of(request)
    name = path_id(request, "name")
    body = parse(WebhookRotate, await json_body(request) if request.can_read_body else {})
    webhooks = services.webhooks
    before = await webhooks.store.subscription(name)
    if before is None:
        raise NotFound("no such webhook")
    secret = _secret(body.secret)
    fields = _rotated(before, secret, services.settings.webhook_secret_overlap)
    stored = await webhooks.store.put(
        name, {k: v for k, v in before.items() if k not in ("_id", "updated_at")} | fields
    )
    await request.app[CONTROL].changed(services, Changed.WEBHOOKS)
    log.info("webhook=%s secret rotated key=%s", name, service)
    wire = _to_wire(stored)
    if body.secret is None:
        wire["secret"] = secret
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
    app.router.add_post("/api/v1/webhooks/{name}/rotate", rotate_secret)
