"""The record over HTTP: legal holds and the retention policy (the back-end's service
key or an admin's token), patients' exports (service keys; the patient's own token or
a signed link to download), and the admin's audit export of a conversation (an
admin's token)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from bson import ObjectId

from hub.core.auth import service_principal
from hub.core.errors import BadRequest, Forbidden, NotFound
from hub.core.protocol import ExportCreate, HoldPut, RetentionPut, iso, parse
from hub.server.routes import json_body, path_id
from hub.server.tenancy import clinic_actor, link_clinic, person_of, service_of

log = logging.getLogger("hub.http")

EXPORT_ID = r"exp_[0-9a-f]{24}"


def _hold_to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    wire = {k: v for k, v in doc.items() if k not in {"_id", "placed_at"} and v is not None}
    return {"id": doc["_id"], **wire, "placed_at": iso(doc["placed_at"])}


async def put_hold(request: web.Request) -> web.Response:
    """PUT /api/v1/holds/{hold_id}: stop retention for a patient or a conversation."""
    services, actor = await clinic_actor(request)
    hold_id = path_id(request, "hold_id")
    hold = parse(HoldPut, await json_body(request))
    if (hold.patient_id is None) == (hold.conversation_id is None):
        raise BadRequest("name one of patient_id and conversation_id")
    stored = await services.retention.store.put_hold(
        hold_id, hold.patient_id, hold.conversation_id, hold.reason, actor
    )
    await services.audit.record(
        actor,
        "hold.placed",
        hold_id=hold_id,
        patient_id=hold.patient_id,
        conversation_id=hold.conversation_id,
    )
    log.info("legal hold=%s placed by=%s", hold_id, actor)
    return web.json_response({"ok": True, "hold": _hold_to_wire(stored)})


async def delete_hold(request: web.Request) -> web.Response:
    """DELETE /api/v1/holds/{hold_id}: lift a hold; deletion resumes at the next run."""
    services, actor = await clinic_actor(request)
    hold_id = path_id(request, "hold_id")
    lifted = await services.retention.store.lift_hold(hold_id)
    if lifted is None:
        raise NotFound("no such hold")
    await services.audit.record(actor, "hold.lifted", hold_id=hold_id)
    log.info("legal hold=%s lifted by=%s", hold_id, actor)
    return web.json_response({"ok": True, "hold": _hold_to_wire(lifted)})


async def list_holds(request: web.Request) -> web.Response:
    services, _ = await clinic_actor(request)
    holds = await services.retention.store.holds()
    return web.json_response({"ok": True, "holds": [_hold_to_wire(h) for h in holds]})


async def put_retention(request: web.Request) -> web.Response:
    """PUT /api/v1/clinic/retention: days kept per kind (null: for ever)."""
    services, actor = await clinic_actor(request)
    policy = parse(RetentionPut, await json_body(request))
    days = {kind: getattr(policy, kind) for kind in policy.model_fields_set}
    if not days:
        raise BadRequest("name at least one of " + ", ".join(RetentionPut.model_fields))
    await services.retention.store.put_policy(days)
    await services.audit.record(actor, "retention.policy", days=days)
    log.info("retention policy updated by=%s", actor)
    return web.json_response({"ok": True, "retention": await services.retention.policy()})


async def get_retention(request: web.Request) -> web.Response:
    services, _ = await clinic_actor(request)
    policy = await services.retention.policy()
    return web.json_response({"ok": True, "retention": policy})


async def create_export(request: web.Request) -> web.Response:
    """POST /api/v1/exports: a patient's export, built in the background (202)."""
    services, service = await service_of(request)
    body = parse(ExportCreate, await json_body(request))
    export = await services.exports.request(body.patient_id, service_principal(service))
    return web.json_response({"ok": True, "export": export}, status=202)


async def get_export(request: web.Request) -> web.Response:
    """GET /api/v1/exports/{export_id}: its state; signed links once it is ready."""
    services, service = await service_of(request)
    export = await services.exports.status(
        request.match_info["export_id"], service_principal(service)
    )
    return web.json_response({"ok": True, "export": export})


async def download_export(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/exports/{export_id}/{bundle|pdf}: the patient's token or a signed link."""
    export_id, kind = request.match_info["export_id"], request.match_info["kind"]
    if request.headers.get("Authorization"):
        services, principal = await person_of(request)
        exports, user_id = services.exports, principal.user_id
    else:
        exports = link_clinic(request).exports
        user_id = exports.verify_link(export_id, kind, dict(request.query))
    stored, name, content_type = await exports.open_download(export_id, kind, user_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        }
    )
    response.content_length = stored.length
    await response.prepare(request)
    async for piece in stored.read():
        await response.write(piece)
    await response.write_eof()
    log.info("export=%s %s served to user=%s bytes=%d", export_id, kind, user_id, stored.length)
    return response


def _json_default(value: Any) -> Any:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


async def audit_export(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/audit/conversations/{conversation_id}: everything about a
    conversation as JSON lines (``{"kind": ..., "doc": ...}``), for an admin; audited
    before the first line is sent."""
    services, principal = await person_of(request)
    if principal.role != "admin":
        raise Forbidden("the audit export is for admins")
    conversation_id = path_id(request, "conversation_id")
    lines = services.exports.store.conversation_record(conversation_id)
    first = await anext(lines)  # NotFound before anything is sent
    await services.audit.record(
        principal.user_id, "audit.exported", conversation_id=conversation_id
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{conversation_id}.jsonl"',
            "Cache-Control": "private, no-store",
        }
    )
    await response.prepare(request)
    await response.write(_line(*first))
    count = 1
    async for kind, doc in lines:
        await response.write(_line(kind, doc))
        count += 1
    await response.write_eof()
    log.info(
        "audit export of conversation=%s to admin=%s lines=%d",
        conversation_id,
        principal.user_id,
        count,
    )
    return response


def _line(kind: str, doc: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"kind": kind, "doc": doc},
        default=_json_default,
        option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS,
    )


def setup(app: web.Application) -> None:
    app.router.add_put("/api/v1/holds/{hold_id}", put_hold)
    app.router.add_delete("/api/v1/holds/{hold_id}", delete_hold)
    app.router.add_get("/api/v1/holds", list_holds)
    app.router.add_put("/api/v1/clinic/retention", put_retention)
    app.router.add_get("/api/v1/clinic/retention", get_retention)
    app.router.add_post("/api/v1/exports", create_export)
    app.router.add_get(f"/api/v1/exports/{{export_id:{EXPORT_ID}}}", get_export)
    app.router.add_get(
        f"/api/v1/exports/{{export_id:{EXPORT_ID}}}/{{kind:bundle|pdf}}", download_export
    )
    app.router.add_get("/api/v1/audit/conversations/{conversation_id}", audit_export)
