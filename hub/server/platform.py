"""The platform operator's API: the clinics, as data (``/api/v1/clinics``).

For whoever runs the platform, not for a clinic: an operator key (``hub operator-keys
create NAME``, ``Authorization: Bearer hubo.<name>.<secret>``) and nothing else opens
it; no key exists until an operator makes one. A change is stored in the registry
(``storage.clinics``), then every hub hears of it on the control channel and starts
or stops the clinic within moments (``hub.server.clinics``). ``default`` is the hub's
own clinic, configured by its settings, and not managed here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from aiohttp import web

from channels.control import Control
from hub.core import clock
from hub.core.auth import bearer_token
from hub.core.errors import BadRequest, NotFound, Unauthorized
from hub.core.protocol import iso
from hub.core.sms_texts import KINDS, check_template
from hub.core.tenants import DEFAULT_TENANT, TENANT_PATTERN, ClinicState, Tenant, parse_tenant
from hub.server.appkeys import CLINICS, CONTROL, SERVICES
from storage.clinics import ClinicActivity, ClinicRegistry
from storage.service_keys import OPERATOR_KEY_PREFIX, ServiceKeys, operator_keys
from storage.sms import SmsStore
from storage.tenants import platform_database, tenant_database

log = logging.getLogger("hub.platform")

OPERATORS = web.AppKey("operators", ServiceKeys)
LIVE_REPORT = timedelta(seconds=90)  # a hub reports every 30 s: older reports are of a hub gone
SMS_COUNTS_AT_ONCE = 16


def setup(app: web.Application) -> None:
    app[OPERATORS] = operator_keys(_platform(app))
    app.router.add_get("/api/v1/clinics", list_clinics)
    app.router.add_get("/api/v1/clinics/{tenant_id}", get_clinic)
    app.router.add_put("/api/v1/clinics/{tenant_id}", put_clinic)
    app.router.add_delete("/api/v1/clinics/{tenant_id}", remove_clinic)


async def operator_of(request: web.Request) -> str:
    """The name of the operator key the request carries; Unauthorized without one."""
    key = bearer_token(request.headers.get("Authorization")) or ""
    if not key.startswith(f"{OPERATOR_KEY_PREFIX}."):
        raise Unauthorized("an operator key is required")
    return await request.app[OPERATORS].verify(key)


def _platform(app: web.Application) -> Any:
    services = app[SERVICES]
    return platform_database(services.mongo, services.settings.mongodb_db)


def _registry(request: web.Request) -> ClinicRegistry:
    return ClinicRegistry(_platform(request.app))


def _tenant_id(request: web.Request) -> str:
    tenant_id = request.match_info["tenant_id"]
    if not TENANT_PATTERN.fullmatch(tenant_id):
        raise BadRequest("a clinic id is 1-32 lowercase letters, digits and -, first no -")
    if tenant_id == DEFAULT_TENANT:
        raise BadRequest("default is the hub's own clinic: its settings configure it")
    return tenant_id


def to_wire(clinic: Tenant, served: bool) -> dict[str, Any]:
    return {"id": clinic.tenant_id, "state": clinic.state, "served": served, **clinic.settings()}


async def list_clinics(request: web.Request) -> web.Response:
    """Every clinic, with what the hubs reported of it: ``sockets`` (on the hubs that
    reported in the last 90 s), ``messages_today`` and ``sms_today`` (UTC day),
    ``last_activity`` (its last message)."""
    await operator_of(request)
    clinics_set = request.app[CLINICS]
    now = clock.now()  # one instant for "today" throughout, midnight or not
    await clinics_set.report(now)  # this hub's own figures, fresh
    activity = await ClinicActivity(_platform(request.app)).summary(now, LIVE_REPORT)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    clinics = await _registry(request).all()
    services = request.app[SERVICES]
    limit = asyncio.Semaphore(SMS_COUNTS_AT_ONCE)

    async def sms_today(tenant_id: str) -> int:
        async with limit:
            db = tenant_database(services.mongo, services.settings.mongodb_db, tenant_id)
            return await SmsStore(db).handed_over_since(day_start)

    sms = await asyncio.gather(*(sms_today(c.tenant_id) for c in clinics))
    listed = []
    for clinic, sent in zip(clinics, sms, strict=True):
        seen = activity.get(clinic.tenant_id, {})
        last = seen.get("last_activity")
        listed.append(
            {
                **to_wire(clinic, clinic.tenant_id in clinics_set.served),
                "sockets": seen.get("sockets", 0),
                "messages_today": seen.get("messages_today", 0),
                "sms_today": sent,
                "last_activity": iso(last) if last is not None else None,
            }
        )
    return web.json_response({"clinics": listed})


async def get_clinic(request: web.Request) -> web.Response:
    await operator_of(request)
    clinic = await _registry(request).get(_tenant_id(request))
    if clinic is None:
        raise NotFound("no such clinic")
    return web.json_response(to_wire(clinic, clinic.tenant_id in request.app[CLINICS].served))


async def put_clinic(request: web.Request) -> web.Response:
    """Create or replace a clinic: its settings (each optional: the hub's where left
    out) and its ``state``. 201 when new; every hub serves it, or stops, within moments."""
    operator = await operator_of(request)
    tenant_id = _tenant_id(request)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object")
    try:
        clinic = parse_tenant(tenant_id, body, state=True)
        sms = request.app[SERVICES].settings.with_clinic(clinic).sms
        for kind in KINDS:  # its name must fit the SMS texts, as HUB_TENANTS' are checked
            check_template(kind, sms.templates.get(kind), sms.clinic_name)
        configured = (issuer.issuer for issuer in request.app[SERVICES].settings.oidc_issuers)
        await _registry(request).check_issuer(clinic, configured)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    created = await _registry(request).put(clinic)
    await _announce(request, tenant_id)
    log.info(
        "clinic %s %s by operator=%s", tenant_id, "created" if created else "changed", operator
    )
    served = tenant_id in request.app[CLINICS].served
    return web.json_response(to_wire(clinic, served), status=201 if created else 200)


async def remove_clinic(request: web.Request) -> web.Response:
    """Mark a clinic removed: its sockets end and every hub stops serving it. Its
    database is kept until an operator drops it (docs/operations.md)."""
    operator = await operator_of(request)
    tenant_id = _tenant_id(request)
    registry = _registry(request)
    clinic = await registry.get(tenant_id)
    if clinic is None:
        raise NotFound("no such clinic")
    removed = replace(clinic, state=ClinicState.REMOVED)
    await registry.put(removed)
    await _announce(request, tenant_id)
    log.info("clinic %s removed by operator=%s", tenant_id, operator)
    return web.json_response(to_wire(removed, False))


async def _announce(request: web.Request, tenant_id: str) -> None:
    """This hub reloads now, so that the answer holds here; the others when the
    control channel's message reaches them (or at their next periodic reload)."""
    await request.app[CLINICS].reload()
    await request.app[CONTROL].publish(Control.CLINIC, tenant_id)
