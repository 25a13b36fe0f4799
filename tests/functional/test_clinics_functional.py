"""Clinics as data: an operator creates, suspends, reactivates and removes a clinic
through one hub while two run, and both hubs and the workers follow within moments,
without a restart."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
import socketio

from channels.names import appointments_channel
from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.server.appkeys import CLINICS, ROUTER, SERVICES
from storage.service_keys import ServiceKeys
from storage.tenants import tenant_database
from tests.support.appointments import event
from tests.support.chat import send
from tests.support.fake_idp import FakeIdp
from tests.support.hubs import ROOT, TIMEOUT, Client, HubFixture
from workers import celery_app


async def http(
    hub: HubFixture, method: str, path: str, key: str | None, body: Any = None, server: int = 0
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.request(
            method, hub.servers[server].make_url(path), json=body, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def operator_key(settings: Settings) -> str:
    """``hub operator-keys create``, as an operator runs it."""
    env = {
        **os.environ,
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_MONGODB_DB": settings.mongodb_db,
        "HUB_REDIS_URL": settings.redis_url or "",
        "HUB_JWT_SECRET": settings.jwt_secret or "",
        "HUB_EMBEDDED": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "operator-keys", "create", "ops",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def connect_once(
    hub: HubFixture,
    tenant: str,
    user_id: str,
    role: str,
    server: int,
    token: str | None = None,
) -> Client | None:
    """A socket of clinic ``tenant`` on hub ``server`` (with the hub's own token, or
    ``token``); None if the hub refused it."""
    token = token or issue_token(hub.settings, user_id, role, 600, tenant)
    client = Client(user_id, role, token)
    try:
        await client.sio.connect(
            str(hub.servers[server].make_url("/")),
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=TIMEOUT,
        )
    except socketio.exceptions.ConnectionError:
        await client.close()
        return None
    hub.clients.append(client)
    return client


async def connect_when_served(
    hub: HubFixture, tenant: str, user_id: str, role: str, server: int, token: str | None = None
) -> Client:
    """A socket of clinic ``tenant`` on hub ``server``, once that hub serves it."""
    deadline = time.monotonic() + TIMEOUT
    while (client := await connect_once(hub, tenant, user_id, role, server, token)) is None:
        assert time.monotonic() < deadline, f"hub {server} never served {tenant}"
        await asyncio.sleep(0.05)  # the hub has not read the registry yet: try again
    return client


async def refused(hub: HubFixture, tenant: str, server: int) -> bool:
    return await connect_once(hub, tenant, "someone", "patient", server) is None


async def test_an_operator_adds_suspends_and_removes_a_clinic_while_two_hubs_run(
    hub: HubFixture, monkeypatch: pytest.MonkeyPatch
):
    await hub.start()
    tenant = f"c{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/clinics/{tenant}"
    # Closed by default: no key, or a clinic's own service key, opens nothing.
    clinic_key = await hub.app()[SERVICES].service_keys.create("backend")
    assert (await http(hub, "GET", "/api/v1/clinics", None))[0] == 401
    assert (await http(hub, "GET", "/api/v1/clinics", clinic_key))[0] == 401
    key = await operator_key(hub.settings)
    assert (await http(hub, "PUT", "/api/v1/clinics/default", key, {}))[0] == 400
    assert (await http(hub, "PUT", path, key, {"sms_daily_cap": 0}))[0] == 400
    assert (await http(hub, "GET", path, key))[0] == 404

    # Created through hub 0; chat in it on hub 1 (and hub 0) within moments.
    started = time.monotonic()
    status, created = await http(hub, "PUT", path, key, {"clinic_name": "North Practice"})
    assert status == 201 and created["state"] == "active" and created["served"], created
    doctor = await connect_when_served(hub, tenant, "dr-1", "doctor", server=1)
    patient = await connect_when_served(hub, tenant, "pat-1", "patient", server=0)
    opened = await doctor.call("conversation:open", {"member_ids": ["pat-1"]})
    conversation_id = opened["conversation"]["id"]
    assert (await send(doctor, conversation_id, "first in the new clinic"))["ok"]
    await patient.wait_for("message:new")
    first_message_after = time.monotonic() - started
    assert first_message_after < TIMEOUT
    print(f"from PUT to the first message on another hub: {first_message_after:.3f} s")
    # Its back-end's appointment events on its Redis channel reach its people: the hubs'
    # one subscription to every clinic's channel took the new one in.
    redis = hub.app()[SERVICES].redis
    published = orjson.dumps(event("apt-1", "scheduled", doctor_id="dr-1", patient_id="pat-1"))
    for _ in range(100):  # pub/sub is best effort until the channel is subscribed
        await redis.publish(appointments_channel(tenant), published)
        try:
            await patient.wait_for("appointment:updated", timeout=0.2)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("the new clinic's appointment channel was never heard")

    # The operator's view: hub 0 reports on its 30 s beat (made now), hub 1 as it answers.
    await hub.app(0)[CLINICS].report()
    status, listed = await http(hub, "GET", "/api/v1/clinics", key, server=1)
    [mine] = [c for c in listed["clinics"] if c["id"] == tenant]
    assert mine["clinic_name"] == "North Practice" and mine["served"]
    assert mine["sockets"] == 2 and mine["messages_today"] == 1 and mine["sms_today"] == 0
    assert mine["last_activity"] is not None
    db = tenant_database(hub.app()[SERVICES].mongo, hub.settings.mongodb_db, tenant)
    backend = await ServiceKeys(db, tenant).create("backend")
    assert (await http(hub, "GET", "/api/v1/holds", backend, server=1))[0] == 200

    # A worker sends the clinic's SMS, under its own name, until it is suspended.
    monkeypatch.setattr(celery_app, "CLINIC_READ_EVERY", 0.0)
    resources = celery_app._Resources(hub.settings)
    try:
        sender = await asyncio.to_thread(resources.sender, tenant)
        assert sender._settings.sms.clinic_name == "North Practice"
        # Suspended: its sockets end on both hubs, its tokens and keys are refused there.
        status, suspended = await http(hub, "PUT", path, key, {"state": "suspended"})
        assert status == 200 and suspended["state"] == "suspended"
        for device in (doctor, patient):
            await asyncio.wait_for(device.disconnected.wait(), TIMEOUT)
        assert await refused(hub, tenant, server=1) and await refused(hub, tenant, server=0)
        assert (await http(hub, "GET", "/api/v1/holds", backend, server=1))[0] == 401
        with pytest.raises(ValueError):
            await asyncio.to_thread(resources.sender, tenant)
    finally:
        resources.close()

    # Active again: the same data, served again.
    assert (await http(hub, "PUT", path, key, {"clinic_name": "North Practice"}))[0] == 200
    again = await connect_when_served(hub, tenant, "pat-1", "patient", server=1)
    synced = await again.call("sync", {"cursors": {conversation_id: 0}})
    assert [m["body"] for m in synced["messages"]] == ["first in the new clinic"]

    # Removed: refused everywhere, listed as removed, its database kept.
    status, removed = await http(hub, "DELETE", path, key)
    assert status == 200 and removed["state"] == "removed"
    await asyncio.wait_for(again.disconnected.wait(), TIMEOUT)
    assert await refused(hub, tenant, server=0)
    assert (await http(hub, "GET", path, key, server=1))[1]["state"] == "removed"
    assert await db["messages"].count_documents({}) == 1


async def test_a_clinic_brings_its_own_identity_provider(hub: HubFixture):
    """A clinic's identity provider is one of its settings: from the PUT on, every hub
    accepts its people's tokens, for that clinic only; suspended, they are refused. An
    entry that would name other clinics, or take another clinic's issuer, is refused."""
    idp = await FakeIdp("own").start()
    idp.issuers["own"].add_key("own-1")
    try:
        await hub.start()
        tenant, other = f"c{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
        path = f"/api/v1/clinics/{tenant}"
        key = await operator_key(hub.settings)
        token = idp.token("own", "own-1", sub="pat-9", role="patient")
        assert await connect_once(hub, tenant, "pat-9", "patient", 1, token) is None
        issuer = idp.url("own")
        for wrong in (
            {"issuer": issuer, "tenant": "default"},
            {"issuer": issuer, "tenant_claim": "clinic", "tenants": [tenant, "default"]},
            {"issuer": "ftp://idp.example/own"},
            {"issuer": issuer, "algorithms": ["HS256"]},
        ):
            status, _ = await http(hub, "PUT", path, key, {"identity_provider": wrong})
            assert status == 400, wrong

        own = {"identity_provider": {"issuer": issuer, "role_map": {"member": "patient"}}}
        status, created = await http(hub, "PUT", path, key, own)
        assert status == 201 and created["identity_provider"]["issuer"] == issuer, created
        member = idp.token("own", "own-1", sub="pat-9", role="member")
        patient = await connect_when_served(hub, tenant, "pat-9", "patient", 1, member)
        [connection] = [c for c in hub.app(1)[ROUTER].connections.values() if c.user_id == "pat-9"]
        assert (connection.principal.tenant, connection.principal.role) == (tenant, "patient")
        status, _ = await http(hub, "PUT", f"/api/v1/clinics/{other}", key, own)
        assert status == 400  # its issuer is this clinic's

        assert (await http(hub, "PUT", path, key, {**own, "state": "suspended"}))[0] == 200
        await asyncio.wait_for(patient.disconnected.wait(), TIMEOUT)
        assert await connect_once(hub, tenant, "pat-9", "patient", 0, member) is None
        assert await connect_once(hub, tenant, "pat-9", "patient", 1, member) is None
    finally:
        await idp.close()
