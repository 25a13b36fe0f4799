"""HTTP routes of the clinic's people: directory entries, pools, their push devices,
and ending sessions.

``PUT`` comes from the clinic's back-end (its service key). ``GET``, ``DELETE`` and
the revocation take the back-end's key or an admin's token (``clinic_actor``): a
clinic offboards a person from its own systems or from the console. Every change is
in force on every hub at once: each hub drops its cached copy on the control
channel's word.
"""

from __future__ import annotations

import logging

from aiohttp import web

from channels.control import Changed
from hub.core.auth import service_principal
from hub.core.errors import BadRequest, Conflict, NotFound
from hub.core.protocol import PoolPut, UserPut, iso, parse
from hub.server.appkeys import CONTROL
from hub.server.routes import json_body, path_id
from hub.server.tenancy import clinic_actor, service_of
from storage.pools import shift

log = logging.getLogger("hub.http")


async def put_user(request: web.Request) -> web.Response:
    """PUT /api/v1/users/{user_id}: a person's display name, role and title, as
    the clinic's records have them. Authenticated with a service key."""
    services, service = await service_of(request)
    user_id = path_id(request, "user_id")
    person = parse(UserPut, await json_body(request))
    stored = await services.directory.put(user_id, person.name, person.role, person.title)
    await request.app[CONTROL].changed(services, Changed.PERSON, user_id)
    log.info("directory entry of user=%s updated key=%s", user_id, service)
    return web.json_response({"ok": True, "user": stored})


async def get_user(request: web.Request) -> web.Response:
    """GET /api/v1/users/{user_id}: the person's directory entry and pools."""
    services, _ = await clinic_actor(request)
    user_id = path_id(request, "user_id")
    entry = await services.directory.get(user_id)
    if entry is None:
        raise NotFound("no such person in the directory")
    pools = await services.pools.pools_of(user_id)
    return web.json_response({"ok": True, "user": {**entry, "pools": pools}})


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /api/v1/users/{user_id}: offboard a person. In order: their sessions end
    on every hub and their tokens issued until now are refused; the conversations they
    own go back to their pools; they leave every pool; their directory entry goes.
    Audited as ``person.removed``. Their messages stay: they are the record."""
    services, actor = await clinic_actor(request)
    user_id = path_id(request, "user_id")
    control = request.app[CONTROL]
    await control.revoke(services, user_id, actor)
    released = await services.inbox.hand_back(user_id, actor)
    devices = await services.push_devices.remove_all(user_id)
    pools = await services.pools.remove_member(user_id)
    removed = await services.directory.delete(user_id)
    for pool_id in pools:
        await control.changed(services, Changed.POOL, pool_id)
    await control.changed(services, Changed.PERSON, user_id)
    await services.audit.record(
        actor,
        "person.removed",
        user_id=user_id,
        detail={"released": released, "pools": pools, "devices": devices},
    )
    log.info("user=%s removed by=%s released=%d pools=%d", user_id, actor, released, len(pools))
    return web.json_response({"ok": True, "removed": removed, "released": released, "pools": pools})


async def list_devices(request: web.Request) -> web.Response:
    """GET /api/v1/users/{user_id}/devices: the person's push devices (kind, platform,
    when registered and last seen; never the endpoint or token)."""
    services, _ = await clinic_actor(request)
    devices = await services.push_devices.of_user(path_id(request, "user_id"))
    for device in devices:
        for name in ("created_at", "last_seen"):
            if device.get(name) is not None:
                device[name] = iso(device[name])
    return web.json_response({"ok": True, "devices": devices})


async def delete_device(request: web.Request) -> web.Response:
    """DELETE /api/v1/users/{user_id}/devices/{device_id}: a lost or stolen phone gets
    no more pushes. Audited as ``device.removed``."""
    services, actor = await clinic_actor(request)
    user_id, device_id = path_id(request, "user_id"), path_id(request, "device_id")
    if not await services.push_devices.unregister(user_id, device_id):
        raise NotFound("no such device of this person")
    await services.audit.record(actor, "device.removed", user_id=user_id, device_id=device_id)
    log.info("push device=%s of user=%s removed by=%s", device_id, user_id, actor)
    return web.json_response({"ok": True})


async def revoke_user(request: web.Request) -> web.Response:
    """POST /api/v1/users/{user_id}/revoke: end every session of the person on every
    hub within seconds, and refuse their tokens issued until now (by ``iat``; a token
    without one counts as issued before)."""
    services, actor = await clinic_actor(request)
    user_id = path_id(request, "user_id")
    revoked_at = await request.app[CONTROL].revoke(services, user_id, actor)
    return web.json_response({"ok": True, "revoked_at": iso(revoked_at)})


async def put_pool(request: web.Request) -> web.Response:
    """PUT /api/v1/pools/{pool_id}: a pool's name, members, lead and response time.
    Authenticated with a service key. A member who is no longer in it gives back the
    conversations of the pool they own."""
    services, service = await service_of(request)
    pool_id = path_id(request, "pool_id")
    pool = parse(PoolPut, await json_body(request))
    for turn in pool.on_call:
        if turn.start.tzinfo is None or turn.end.tzinfo is None or not turn.start < turn.end:
            raise BadRequest("on_call: each shift has a start before its end, with offsets")
    before = await services.pools.find(pool_id)
    members = list(dict.fromkeys(pool.member_ids))
    stored = await services.pools.put(
        pool_id,
        pool.name,
        members,
        pool.lead_id,
        pool.response_minutes,
        [shift(t.user_id, t.start, t.end) for t in pool.on_call],
    )
    await request.app[CONTROL].changed(services, Changed.POOL, pool_id)
    actor = service_principal(service)
    for left in set(before["member_ids"] if before else ()) - set(members):
        await services.inbox.hand_back(left, actor, pool_id)
    log.info("pool=%s updated members=%d key=%s", pool_id, len(members), service)
    return web.json_response({"ok": True, "pool": stored})


async def get_pool(request: web.Request) -> web.Response:
    """GET /api/v1/pools/{pool_id}: the pool as stored."""
    services, _ = await clinic_actor(request)
    pool = await services.pools.find(path_id(request, "pool_id"))
    if pool is None:
        raise NotFound("no such pool")
    return web.json_response({"ok": True, "pool": pool})


async def delete_pool(request: web.Request) -> web.Response:
    """DELETE /api/v1/pools/{pool_id}: remove an empty pool. One that conversations
    are still routed to is refused (409): transfer them to another pool first."""
    services, actor = await clinic_actor(request)
    pool_id = path_id(request, "pool_id")
    routed = await services.inbox.routed_to(pool_id)
    if routed:
        raise Conflict(f"{routed} conversations are routed to this pool: transfer them first")
    if not await services.pools.delete(pool_id):
        raise NotFound("no such pool")
    await request.app[CONTROL].changed(services, Changed.POOL, pool_id)
    await services.audit.record(actor, "pool.removed", pool_id=pool_id)
    log.info("pool=%s removed by=%s", pool_id, actor)
    return web.json_response({"ok": True})


def setup(app: web.Application) -> None:
    app.router.add_put("/api/v1/users/{user_id}", put_user)
    app.router.add_get("/api/v1/users/{user_id}", get_user)
    app.router.add_delete("/api/v1/users/{user_id}", delete_user)
    app.router.add_post("/api/v1/users/{user_id}/revoke", revoke_user)
    app.router.add_get("/api/v1/users/{user_id}/devices", list_devices)
    app.router.add_delete("/api/v1/users/{user_id}/devices/{device_id}", delete_device)
    app.router.add_put("/api/v1/pools/{pool_id}", put_pool)
    app.router.add_get("/api/v1/pools/{pool_id}", get_pool)
    app.router.add_delete("/api/v1/pools/{pool_id}", delete_pool)
