"""Sessions that end: token expiry and refresh on the same socket, revocation on every
hub, offboarding of a person and of a pool, and changes in force on every hub at once.
Real hubs on loopback with SecantusDB and redis-server."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from hub.core import clock
from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.core.tenants import Tenant
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.chat import code
from tests.support.hubs import JWT_SECRET, TIMEOUT, Client, HubFixture, MakeHub, until

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

WARNING, GRACE = 2.0, 0.5  # HUB_SESSION_WARNING, HUB_SESSION_GRACE in these tests


@pytest.fixture
def session_settings(settings: Settings) -> Settings:
    return replace(
        settings,
        session_warning=WARNING,
        session_grace=GRACE,
        tenants=(Tenant("north", clinic_name="North Clinic"),),
    )


@pytest.fixture
async def hubs(make_hub: MakeHub, session_settings: Settings) -> HubFixture:
    """Two hub processes on the same stores."""
    hub = await make_hub(session_settings)
    await hub.start()
    return hub


async def http(
    hub: HubFixture, method: str, path: str, credential: str | None, server: int = 0, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.request(
            method, hub.servers[server].make_url(path), headers=headers, **kw
        ) as response,
    ):
        return response.status, await response.json()


async def service_key(hub: HubFixture) -> str:
    return await hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")


async def ended(client: Client) -> str:
    """The reason of the socket's ``session:ended``, once the hub disconnected it."""
    notice = await client.wait_for("session:ended")
    await until(lambda: client.disconnected.is_set() and not client.sio.connected)
    return str(notice["reason"])


def token_at(user_id: str, role: str, **claims: Any) -> str:
    """A token of the hub's own key with chosen claims (``iat`` left out unless given)."""
    body = {"sub": user_id, "role": role, "exp": int(clock.timestamp()) + 600, **claims}
    return jwt.encode(body, JWT_SECRET, "HS256")


async def test_a_session_ends_at_its_tokens_expiry_unless_refreshed(hubs: HubFixture):
    """A socket stayed open after its token expired and kept receiving messages."""
    settings = hubs.settings
    short, refreshed = hubs.user("short"), hubs.user("refreshed")
    lapsing = await hubs.connect(short, "doctor", token=issue_token(settings, short, "doctor", 3))
    staying = await hubs.connect(
        refreshed, "doctor", server=1, token=issue_token(settings, refreshed, "doctor", 3)
    )
    warned = await staying.wait_for("session:expiring")
    assert warned["expires_at"].endswith("Z")

    # Another person, another clinic or another role: refused, and the socket keeps its token.
    refusals = [
        (issue_token(settings, short, "doctor"), "forbidden"),
        (issue_token(settings, refreshed, "doctor", tenant="north"), "forbidden"),
        (issue_token(settings, refreshed, "admin"), "forbidden"),
        ("not-a-token", "unauthorized"),
        (issue_token(settings, refreshed, "doctor", ttl=-60), "unauthorized"),
    ]
    for token, refused in refusals:
        assert code(await staying.call("session:refresh", {"token": token})) == refused
    assert code(await staying.call("session:refresh", {})) == "bad_request"
    answer = await staying.call(
        "session:refresh", {"token": issue_token(settings, refreshed, "doctor", 600)}
    )
    assert answer["ok"] and answer["expires_at"] > warned["expires_at"], answer

    # The socket that did not refresh is ended past exp and the grace; by then the
    # refreshed one, whose first token expired at the same second, is still served.
    assert await ended(lapsing) == "token_expired"
    assert (await staying.call("session:me", {}))["user"]["id"] == refreshed
    metric = hubs.app()[SERVICES].metrics.sessions_ended.labels("token_expired")
    assert metric._value.get() >= 1


@pytest.mark.also_on_cluster
async def test_revocation_ends_every_socket_on_every_hub_and_refuses_older_tokens(
    hubs: HubFixture,
):
    patient_id, admin_id = hubs.user("leaver"), hubs.user("admin")
    old_token = hubs.token(patient_id, "doctor")
    laptop = await hubs.connect(patient_id, "doctor", server=0, token=old_token)
    phone = await hubs.connect(patient_id, "doctor", server=1, token=old_token)
    bystander = await hubs.connect(hubs.user("stays"), "doctor", server=1)
    admin = hubs.token(admin_id, "admin")
    path = f"/api/v1/users/{patient_id}/revoke"

    assert (await http(hubs, "POST", path, None))[0] == 401
    assert (await http(hubs, "POST", path, hubs.token(hubs.user("dr"), "doctor")))[0] == 403
    revoked = hubs.app(0)[SERVICES].metrics.sessions_ended.labels("revoked")
    before = revoked._value.get()
    status, body = await http(hubs, "POST", path, admin)
    assert status == 200 and body["revoked_at"].endswith("Z"), body
    assert await ended(laptop) == "revoked"
    assert await ended(phone) == "revoked"  # on the other hub, through the control channel
    assert bystander.sio.connected
    # Ended once, though the revoking hub hears its own word on the control channel too.
    assert len(laptop.recorder.of("session:ended")) == 1
    assert revoked._value.get() - before == 1

    # Tokens issued before the revocation, or with no iat, are refused everywhere.
    for refused in (old_token, token_at(patient_id, "doctor")):
        with pytest.raises(socketio.exceptions.ConnectionError):
            await hubs.connect(patient_id, "doctor", server=1, token=refused)
        status, body = await http(hubs, "GET", "/api/v1/clinic/hours", refused)
        assert (status, body["error"]["message"]) == (401, "session revoked: sign in again")
    later = token_at(patient_id, "doctor", iat=int(clock.timestamp()) + 2)
    again = await hubs.connect(patient_id, "doctor", server=1, token=later)
    assert (await again.call("session:me", {}))["ok"]

    # A back-end's key revokes too; both acts are in the audit trail.
    status, _ = await http(hubs, "POST", path, await service_key(hubs))
    assert status == 200
    assert await ended(again) == "revoked"
    db = hubs.app()[SERVICES].db
    actors = [
        doc["actor_id"]
        async for doc in db[names.AUDIT].find({"action": "sessions.revoked"}).sort("at", 1)
    ]
    assert actors[0] == admin_id and actors[1].startswith("system:service:backend-")


async def clinic_people(hub: HubFixture, key: str) -> dict[str, str]:
    ids = {label: hub.user(label) for label in ("rosa", "ben", "pat")}
    for label, role in (("rosa", "nurse"), ("ben", "nurse"), ("pat", "patient")):
        status, _ = await http(
            hub, "PUT", f"/api/v1/users/{ids[label]}", key, json={"name": label, "role": role}
        )
        assert status == 200
    return ids


async def put_pool(hub: HubFixture, key: str, pool_id: str, members: list[str]) -> None:
    status, body = await http(
        hub, "PUT", f"/api/v1/pools/{pool_id}", key, json={"name": "Triage", "member_ids": members}
    )
    assert status == 200, body


async def test_offboarding_a_person_revokes_them_and_hands_their_conversations_back(
    hubs: HubFixture,
):
    key = await service_key(hubs)
    ids = await clinic_people(hubs, key)
    triage = f"triage-{hubs.prefix}"
    await put_pool(hubs, key, triage, [ids["rosa"], ids["ben"]])
    rosa = await hubs.connect(ids["rosa"], "nurse", server=1)
    ben = await hubs.connect(ids["ben"], "nurse", server=0)
    patient = await hubs.connect(ids["pat"], "patient")
    first = (await patient.call("conversation:open", {"pool_id": triage}))["conversation"]["id"]
    assert (await rosa.call("conversation:claim", {"conversation_id": first}))["ok"]

    # Rosa leaves the pool: the conversation she owned in it goes back to it, unowned.
    await put_pool(hubs, key, triage, [ids["ben"]])
    back = await ben.wait_for("inbox:updated", lambda d: d["action"] == "released")
    assert back["conversation_id"] == first and back["owner"] is None

    # Ben claims it, then leaves the clinic: revoked, handed back, out of the pool.
    await put_pool(hubs, key, triage, [ids["ben"], ids["rosa"]])
    assert (await ben.call("conversation:claim", {"conversation_id": first}))["ok"]
    admin = hubs.token(hubs.user("admin"), "admin")
    assert (await http(hubs, "DELETE", f"/api/v1/users/{ids['ben']}", None))[0] == 401
    nurse_token = hubs.token(ids["rosa"], "nurse")
    assert (await http(hubs, "DELETE", f"/api/v1/users/{ids['ben']}", nurse_token))[0] == 403
    status, body = await http(hubs, "DELETE", f"/api/v1/users/{ids['ben']}", admin, server=1)
    assert status == 200 and body["released"] == 1 and body["pools"] == [triage], body
    assert await ended(ben) == "revoked"
    await rosa.wait_for(
        "inbox:updated", lambda d: d["action"] == "released" and d["by"] != ids["rosa"]
    )
    route = await hubs.app()[SERVICES].db[names.INBOX].find_one({"_id": first})
    assert route["owner_id"] is None
    assert (await http(hubs, "GET", f"/api/v1/users/{ids['ben']}", key))[0] == 404
    status, pool = await http(hubs, "GET", f"/api/v1/pools/{triage}", admin, server=1)
    assert status == 200 and pool["pool"]["member_ids"] == [ids["rosa"]]
    status, rosa_entry = await http(hubs, "GET", f"/api/v1/users/{ids['rosa']}", admin)
    assert rosa_entry["user"]["role"] == "nurse"
    assert rosa_entry["user"]["pools"] == [{"id": triage, "name": "Triage"}]
    audit = hubs.app()[SERVICES].db[names.AUDIT]
    removed = await audit.find_one({"action": "person.removed", "user_id": ids["ben"]})
    assert removed is not None and removed["actor_id"] == hubs.user("admin")

    # A pool with conversations routed to it is not removed; an empty one is.
    status, body = await http(hubs, "DELETE", f"/api/v1/pools/{triage}", key)
    assert status == 409 and body["error"]["code"] == "conflict"
    empty = f"empty-{hubs.prefix}"
    await put_pool(hubs, key, empty, [ids["rosa"]])
    assert (await http(hubs, "DELETE", f"/api/v1/pools/{empty}", key))[0] == 200
    assert (await http(hubs, "GET", f"/api/v1/pools/{empty}", key, server=1))[0] == 404
    assert (await http(hubs, "DELETE", f"/api/v1/pools/{empty}", key))[0] == 404


@pytest.mark.also_on_cluster
async def test_a_change_through_one_hub_is_in_force_on_every_hub_at_once(hubs: HubFixture):
    """An admin behind a load balancer set the hours on one hub, then read "no office
    hours are set" from another for up to 30 s (each hub cached its last reading)."""
    key = await service_key(hubs)
    reader = hubs.token(hubs.user("dr"), "doctor")
    assert (await http(hubs, "GET", "/api/v1/clinic/hours", reader, server=1))[0] == 404
    hours = {
        "timezone": "Europe/Paris",
        "weekly": {"mon": [["08:00", "18:00"]]},
        "holidays": [],
    }
    assert (await http(hubs, "PUT", "/api/v1/clinic/hours", key, json=hours))[0] == 200
    seen: list[int] = []

    async def read() -> bool:
        seen.append((await http(hubs, "GET", "/api/v1/clinic/hours", reader, server=1))[0])
        return seen[-1] == 200

    await until_async(read, timeout=3.0)

    # The directory and pools alike: the other hub's copies are dropped.
    ids = await clinic_people(hubs, key)
    pool_id = f"desk-{hubs.prefix}"
    await put_pool(hubs, key, pool_id, [ids["rosa"]])
    other = hubs.app(1)[SERVICES]
    assert (await other.pools.get(pool_id))["member_ids"] == [ids["rosa"]]  # now cached there
    assert (await other.directory.people([ids["rosa"]]))[ids["rosa"]]["name"] == "rosa"
    await put_pool(hubs, key, pool_id, [ids["ben"]])
    status, _ = await http(
        hubs, "PUT", f"/api/v1/users/{ids['rosa']}", key, json={"name": "Rosa A.", "role": "nurse"}
    )
    assert status == 200

    async def both_seen() -> bool:
        pool = await other.pools.get(pool_id)
        person = (await other.directory.people([ids["rosa"]]))[ids["rosa"]]
        return pool["member_ids"] == [ids["ben"]] and person["name"] == "Rosa A."

    await until_async(both_seen, timeout=3.0)


async def until_async(check: Any, timeout: float = TIMEOUT) -> None:
    """Poll an async ``check`` until it returns True, at most ``timeout`` seconds."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)
