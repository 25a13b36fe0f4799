"""Several clinics in one hub: the same user ids in two clinics never meet.

One clinic's people and back-end (*home*) do everything the hub offers (chat, staff
notes, an attachment, an appointment, a consultation, an export, a pool, holds,
hours, a webhook). Another clinic's people (*other*), who have the very same user ids
and roles, listen while it happens, then send every client event and call every HTTP
route with home's ids. It runs for each direction between two clinics, and with the
`default` clinic (the hub's own tokens) at home. The tables below must name every
event and route the hub has, so a new one without its tenancy case fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo import AsyncMongoClient

from channels.names import appointments_stream, consultation_version_key, presence_key
from hub.core.auth import issue_token
from hub.core.protocol import Event
from hub.core.settings import OidcIssuer, Settings
from hub.core.tenants import DEFAULT_TENANT, Tenant
from hub.server import embedded
from hub.server.appkeys import TENANTS
from storage.service_keys import key_tenant
from storage.tenants import database_name
from tests.support.attachments import upload, uploaded
from tests.support.chat import send
from tests.support.consultations import say
from tests.support.fake_idp import FakeIdp
from tests.support.files import photo
from tests.support.hubs import TIMEOUT, Client, HubFixture, MakeHub
from tests.support.sms import Backend, new_phone, outbox, own_stack
from tests.support.sms import until as until_async

NORTH, SOUTH = "home", "other"
# The same people in both clinics: the same ids, the same roles.
DR, PAT, NURSE, ADMIN = "dr-1", "pat-1", "nurse-1", "admin-1"
ROLES = {DR: "doctor", PAT: "patient", NURSE: "nurse", ADMIN: "admin"}
EVERY_DAY = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = await FakeIdp(NORTH, SOUTH).start()
    for clinic in (NORTH, SOUTH):
        fake.issuers[clinic].add_key(f"{clinic}-1")
    yield fake
    await fake.close()


def two_clinics(settings: Settings, idp: FakeIdp) -> Settings:
    return replace(
        settings,
        oidc_issuers=tuple(
            OidcIssuer(issuer=idp.url(c), jwks_url=f"{idp.url(c)}/jwks", tenant=c)
            for c in (NORTH, SOUTH)
        ),
        tenants=(
            Tenant(NORTH, clinic_name="North Clinic"),
            Tenant(SOUTH, clinic_name="South Clinic"),
        ),
    )


@dataclass
class Clinic:
    """One clinic's people and back-end, on the shared hub."""

    tenant: str
    hub: HubFixture
    idp: FakeIdp
    key: str = ""
    people: dict[str, Client] = field(default_factory=dict)

    @property
    def secret(self) -> str:
        """In every text the clinic writes."""
        return f"{self.tenant}-only: the biopsy came back"

    def token(self, user_id: str) -> str:
        role = ROLES.get(user_id, "patient")
        if self.tenant == DEFAULT_TENANT:  # the hub's own key
            return issue_token(self.hub.settings, user_id, role)
        return self.idp.token(self.tenant, f"{self.tenant}-1", sub=user_id, role=role)

    async def connect_all(self) -> None:
        for user_id, role in ROLES.items():
            self.people[user_id] = await self.hub.connect(user_id, role, token=self.token(user_id))

    async def http(
        self, method: str, path: str, body: Any = None, *, as_user: str | None = None
    ) -> tuple[int, bytes]:
        """A request with the clinic's service key, or a person's token (``as_user``)."""
        credential = self.key if as_user is None else self.token(as_user)
        url = self.hub.servers[0].make_url(path)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT * 2)) as http,
            http.request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {credential}"},
                allow_redirects=False,
            ) as response,
        ):
            return response.status, await response.read()

    async def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, raw = await self.http(method, path, body)
        assert status in (200, 201, 202), (path, status, raw)
        answer: dict[str, Any] = orjson.loads(raw)
        return answer


@dataclass
class HomeIds:
    """What home made: the ids the other clinic tries."""

    tenant: str
    secret: str
    conversation_id: str
    seq: int
    attachment_id: str
    appointment_id: str
    consultation_id: str
    export_id: str
    notification_id: str
    device_id: str
    signed_attachment: str
    signed_export: str
    token: str  # home's patient's token: another clinic's socket may not take it on


def appointment_event(appointment_id: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "appointment_id": appointment_id,
        "doctor_id": DR,
        "patient_id": PAT,
        "status": "confirmed",
        "start": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        "occurred_at": datetime.now(UTC).isoformat(),
    }


async def populate(home: Clinic) -> HomeIds:
    """Home uses every feature, so that each of the other's attempts has something to find."""
    dr, pat, nurse = home.people[DR], home.people[PAT], home.people[NURSE]
    await home.ok(
        "PUT", f"/api/v1/users/{PAT}", {"name": f"Pat of {home.tenant}", "role": "patient"}
    )
    await home.ok(
        "PUT",
        f"/api/v1/users/{PAT}/contact",
        {"phone": "+14155550123", "timezone": "America/New_York", "sms_opt_in": True},
    )
    await home.ok("PUT", "/api/v1/pools/triage", {"name": "Triage", "member_ids": [NURSE]})
    await home.ok("PUT", "/api/v1/clinic/hours", {"timezone": "UTC", "weekly": EVERY_DAY})
    await home.ok("PUT", "/api/v1/clinic/retention", {"messages": 3650})
    await home.ok("PUT", "/api/v1/holds/home-hold", {"patient_id": PAT, "reason": home.secret})
    await home.ok(
        "PUT",
        "/api/v1/webhooks/home-hook",
        {"url": "http://127.0.0.1:9/hook", "events": ["message.stored"]},
    )
    appointment_id = f"apt-home-{uuid.uuid4().hex[:6]}"
    await home.ok("POST", "/api/v1/events/appointments", appointment_event(appointment_id))
    notified = await pat.wait_for("notification:new")

    opened = await dr.call("conversation:open", {"member_ids": [PAT]})
    conversation_id = opened["conversation"]["id"]
    sent = await send(dr, conversation_id, home.secret)
    assert sent["ok"], sent
    await pat.wait_for("message:new")
    note = await dr.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": uuid.uuid4().hex,
            "body": f"note: {home.secret}",
            "visibility": "staff",
        },
    )
    assert note["ok"], note
    attachment = await uploaded(
        home.hub, dr, conversation_id, photo("PNG", (8, 8)), f"{home.tenant}-scan.png"
    )
    signed = await dr.call("attachment:url", {"id": attachment["id"]})
    assert signed["ok"], signed
    home_named = f"tenant={home.tenant}" in signed["url"]
    assert home_named is (home.tenant != DEFAULT_TENANT), signed["url"]

    joined = await dr.call("consultation:join", {"appointment_id": appointment_id})
    consultation_id = joined["consultation"]["id"]
    await say(dr, consultation_id, home.secret)
    registered = await pat.call(
        "push:register", {"kind": "fcm", "token": "home-device", "platform": "android"}
    )
    assert registered["ok"], registered

    export = await pat.call("export:request", {})
    ready = await pat.wait_for(
        "export:ready", lambda d: d["export"]["id"] == export["export"]["id"], timeout=30
    )
    assert nurse.user_id == NURSE
    return HomeIds(
        tenant=home.tenant,
        secret=home.secret,
        conversation_id=conversation_id,
        seq=sent["message"]["seq"],
        attachment_id=attachment["id"],
        appointment_id=appointment_id,
        consultation_id=consultation_id,
        export_id=export["export"]["id"],
        notification_id=notified["notification"]["id"],
        device_id=registered["device"]["id"],
        signed_attachment=signed["url"],
        signed_export=ready["export"]["links"]["bundle"],
        token=home.token(PAT),
    )


# Each client event, as the other clinic's same-id person with home's ids: the
# payload, and whether the other clinic refuses it or answers it for itself (with
# nothing of home's).
Payload = Callable[[HomeIds], dict[str, Any]]
EVENTS: dict[str, tuple[str, Payload, str]] = {
    Event.SESSION_ME: (PAT, lambda n: {}, "answered"),
    Event.CONVERSATION_LIST: (DR, lambda n: {}, "answered"),
    Event.MESSAGE_HISTORY: (PAT, lambda n: {"conversation_id": n.conversation_id}, "refused"),
    Event.NOTE_HISTORY: (DR, lambda n: {"conversation_id": n.conversation_id}, "refused"),
    Event.MESSAGE_SEND: (
        DR,
        lambda n: {"conversation_id": n.conversation_id, "client_id": "x1", "body": "hi"},
        "refused",
    ),
    Event.MESSAGE_READ: (
        PAT,
        lambda n: {"conversation_id": n.conversation_id, "seq": 1},
        "refused",
    ),
    Event.MESSAGE_EDIT: (
        DR,
        lambda n: {"conversation_id": n.conversation_id, "seq": n.seq, "body": "changed"},
        "refused",
    ),
    Event.MESSAGE_RETRACT: (
        DR,
        lambda n: {"conversation_id": n.conversation_id, "seq": n.seq, "reason": "x"},
        "refused",
    ),
    Event.SYNC: (PAT, lambda n: {"cursors": {n.conversation_id: 0}}, "refused"),
    Event.TYPING: (DR, lambda n: {"conversation_id": n.conversation_id, "typing": True}, "refused"),
    Event.PRESENCE_QUERY: (PAT, lambda n: {"user_ids": [DR]}, "refused"),
    Event.NOTIFICATION_LIST: (PAT, lambda n: {}, "answered"),
    Event.NOTIFICATION_ACK: (PAT, lambda n: {"ids": [n.notification_id]}, "answered"),
    Event.APPOINTMENT_LIST: (PAT, lambda n: {}, "answered"),
    Event.CONSULTATION_JOIN: (DR, lambda n: {"appointment_id": n.appointment_id}, "refused"),
    Event.CONSULTATION_END: (DR, lambda n: {"consultation_id": n.consultation_id}, "refused"),
    Event.TRANSCRIPT_APPEND: (
        DR,
        lambda n: {
            "consultation_id": n.consultation_id,
            "client_id": "t1",
            "speaker": "doctor",
            "text": "x",
        },
        "refused",
    ),
    Event.TRANSCRIPT_HISTORY: (DR, lambda n: {"consultation_id": n.consultation_id}, "refused"),
    Event.ASSISTANT_ASK: (
        DR,
        lambda n: {"consultation_id": n.consultation_id, "question": "?"},
        "refused",
    ),
    Event.ASSISTANT_CONFIGURE: (
        DR,
        lambda n: {"consultation_id": n.consultation_id, "auto": True},
        "refused",
    ),
    Event.ASSISTANT_APPROVE: (
        DR,
        lambda n: {"consultation_id": n.consultation_id, "request_id": "r-1"},
        "refused",
    ),
    Event.ATTACHMENT_URL: (DR, lambda n: {"id": n.attachment_id}, "refused"),
    Event.PUSH_REGISTER: (
        PAT,
        lambda n: {"kind": "fcm", "token": "other-device", "platform": "android"},
        "answered",
    ),
    Event.PUSH_UNREGISTER: (PAT, lambda n: {"device_id": n.device_id}, "refused"),
    Event.INBOX_POOLS: (NURSE, lambda n: {}, "answered"),
    Event.SESSION_REFRESH: (PAT, lambda n: {"token": n.token}, "refused"),
    Event.INBOX_LIST: (NURSE, lambda n: {"pool_id": "triage", "state": "all"}, "refused"),
    Event.CONVERSATION_CLAIM: (NURSE, lambda n: {"conversation_id": n.conversation_id}, "refused"),
    Event.CONVERSATION_RELEASE: (
        NURSE,
        lambda n: {"conversation_id": n.conversation_id},
        "refused",
    ),
    Event.CONVERSATION_TRANSFER: (
        NURSE,
        lambda n: {"conversation_id": n.conversation_id, "to_user": NURSE},
        "refused",
    ),
    Event.EXPORT_URL: (PAT, lambda n: {"export_id": n.export_id}, "refused"),
    Event.EXPORT_REQUEST: (PAT, lambda n: {}, "answered"),
    # Last, after the HTTP routes too: it makes the other's own conversation, of the same
    # members, so of the same id, in the other clinic's database.
    Event.CONVERSATION_OPEN: (DR, lambda n: {"member_ids": [PAT]}, "answered"),
}


def home_marks(ids: HomeIds) -> list[bytes]:
    """What may never reach the other clinic: home's texts, names and the ids only home has."""
    return [
        ids.secret.encode(),
        f"Pat of {ids.tenant}".encode(),
        f"{ids.tenant}-scan".encode(),
        ids.attachment_id.encode(),
        ids.appointment_id.encode(),
        ids.consultation_id.encode(),
        ids.export_id.encode(),
        ids.notification_id.encode(),
        ids.device_id.encode(),
    ]


def leaks(data: Any, ids: HomeIds) -> list[bytes]:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return [mark for mark in home_marks(ids) if mark in raw]


@pytest.mark.parametrize(
    "home_tenant, other_tenant", [(NORTH, SOUTH), (SOUTH, NORTH), (DEFAULT_TENANT, NORTH)]
)
async def test_two_clinics_with_the_same_user_ids_see_nothing_of_each_other(
    make_hub: MakeHub,
    settings: Settings,
    idp: FakeIdp,
    mongodb_server: embedded.ChildServer,
    home_tenant: str,
    other_tenant: str,
):
    hub = await make_hub(two_clinics(settings, idp))
    tenants = hub.app()[TENANTS]
    home, other = Clinic(home_tenant, hub, idp), Clinic(other_tenant, hub, idp)
    for clinic in (home, other):
        clinic.key = await tenants[clinic.tenant].service_keys.create("backend")
        assert key_tenant(clinic.key) == clinic.tenant
        await clinic.connect_all()
    me = await other.people[PAT].call("session:me", {})
    assert me["user"]["id"] == PAT

    ids = await populate(home)

    # 1. Nothing home did reached the other's sockets, though they are the same user ids.
    for person in other.people.values():
        heard = [(event, data) for event, data in person.recorder.events if event != "connect"]
        assert all(not leaks(data, ids) for _, data in heard), heard
        assert not [e for e, _ in heard if e not in ("presence",)], heard

    # 2. Every client event: the other's same-id person with home's ids.
    every_event = {value for name, value in vars(Event).items() if name.isupper()}
    assert set(EVENTS) == every_event, "every client event needs its tenancy case"
    wrong = []
    for event, (user_id, payload, expected) in EVENTS.items():
        if event == Event.CONVERSATION_OPEN:
            continue
        ack = await other.people[user_id].call(event, payload(ids))
        assert not leaks(ack, ids), (event, ack)
        if ack["ok"] is not (expected == "answered"):
            wrong.append((event, ack))
    assert not wrong, wrong
    south_lists = {
        Event.CONVERSATION_LIST: (DR, "conversations"),
        Event.NOTIFICATION_LIST: (PAT, "notifications"),
        Event.APPOINTMENT_LIST: (PAT, "appointments"),
        Event.INBOX_POOLS: (NURSE, "pools"),
    }
    for event, (user_id, name) in south_lists.items():
        assert (await other.people[user_id].call(event, {}))[name] == [], event
    synced = await other.people[PAT].call("sync", {"cursors": {ids.conversation_id: 0}})
    assert not leaks(synced, ids)

    # The same payloads as home's people reach home's data: the refusals above are
    # the clinic boundary, not payloads that fail anyway.
    for event, (user_id, payload, _) in EVENTS.items():
        if event in (Event.MESSAGE_HISTORY, Event.TRANSCRIPT_HISTORY, Event.ATTACHMENT_URL):
            ack = await home.people[user_id].call(event, payload(ids))
            assert ack["ok"] and leaks(ack, ids), (event, ack)
    notes = await home.people[DR].call("note:history", {"conversation_id": ids.conversation_id})
    assert home.secret in notes["notes"][0]["body"]

    # 3. Every HTTP route, with the other's key or its same-id people.
    await check_routes(hub, home, other, ids)

    # The other's doctor opens a conversation with its patient: the same members, so
    # the same conversation id as home's, and yet the other's own, empty one.
    _, payload, _ = EVENTS[Event.CONVERSATION_OPEN]
    opened = await other.people[DR].call(Event.CONVERSATION_OPEN, payload(ids))
    assert opened["conversation"]["id"] == ids.conversation_id
    history = await other.people[PAT].call(
        "message:history", {"conversation_id": ids.conversation_id}
    )
    assert history["ok"] and history["messages"] == [], history

    # 4. Storage: home's documents live in home's database only; the other clinics'
    # databases have none of home's texts or ids in any collection.
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongodb_server.url, timeoutMS=5000)
    try:
        home_db = client[database_name(settings.mongodb_db, home.tenant)]
        for tenant in set(hub.settings.tenant_ids) - {home.tenant}:
            db = client[database_name(settings.mongodb_db, tenant)]
            for name in await db.list_collection_names():
                async for doc in db[name].find({}):
                    assert not leaks(orjson.dumps(doc, default=str), ids), (tenant, name, doc)
        assert await home_db.messages.count_documents({"body": home.secret}) == 1
    finally:
        await client.close()
    redis = tenants[home.tenant].redis
    assert await redis.exists(appointments_stream(home.tenant))
    assert await redis.exists(presence_key(home.tenant, DR))
    assert await redis.exists(presence_key(other.tenant, DR))
    [third] = set(hub.settings.tenant_ids) - {home.tenant, other.tenant}
    assert not await redis.exists(presence_key(third, DR))  # nobody of it is online
    # The other's attempts on home's consultation id made keys under its prefix only.
    keys = {key async for key in redis.scan_iter(match=f"*{ids.consultation_id}*")}
    assert consultation_version_key(home.tenant, ids.consultation_id) in keys
    assert keys <= {
        consultation_version_key(c.tenant, ids.consultation_id) for c in (home, other)
    }, keys


# Each HTTP route: how the other clinic tries it with home's ids, and what it must get.
Try = Callable[[Clinic, Clinic, HomeIds], Awaitable[tuple[int, bytes]]]


def forged(key: str, tenant: str) -> str:
    """A key of one clinic with another clinic's name in it."""
    prefix, _, rest = key.split(".", 2)
    return f"{prefix}.{tenant}.{rest}"


async def signed_get(hub: HubFixture, link: str, to: str | None = None) -> int:
    """GET a signed link without a token: as given, or naming clinic ``to`` instead."""
    url = hub.servers[0].make_url("/" + link.split("://", 1)[1].split("/", 1)[1])
    if to is not None:
        query = {k: v for k, v in url.query.items() if k != "tenant"}
        url = url.with_query({**query, **({} if to == DEFAULT_TENANT else {"tenant": to})})
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(url) as response,
    ):
        return response.status


async def _upload(other: Clinic, ids: HomeIds) -> tuple[int, bytes]:
    status, answer = await upload(
        other.hub, other.people[DR], ids.conversation_id, photo("PNG", (8, 8)), "x.png"
    )
    return status, orjson.dumps(answer)


async def _forged_key(home: Clinic, other: Clinic, ids: HomeIds) -> tuple[int, bytes]:
    fake = Clinic(home.tenant, other.hub, other.idp, key=forged(other.key, home.tenant))
    return await fake.http("GET", "/api/v1/holds")


ROUTES: dict[tuple[str, str], tuple[Try, set[int]]] = {
    ("POST", "/api/v1/conversations/{conversation_id}/attachments"): (
        lambda n, s, i: _upload(s, i),
        {403, 404},
    ),
    ("GET", "/api/v1/attachments/{attachment_id}"): (
        lambda n, s, i: s.http("GET", f"/api/v1/attachments/{i.attachment_id}", as_user=DR),
        {404},
    ),
    ("DELETE", "/api/v1/attachments/{attachment_id}"): (
        lambda n, s, i: s.http("DELETE", f"/api/v1/attachments/{i.attachment_id}", as_user=DR),
        {404},
    ),
    ("GET", "/api/v1/attachments/{attachment_id}/thumbnail"): (
        lambda n, s, i: s.http(
            "GET", f"/api/v1/attachments/{i.attachment_id}/thumbnail", as_user=DR
        ),
        {404},
    ),
    ("GET", "/api/v1/conversations/{conversation_id}/messages"): (
        lambda n, s, i: s.http(
            "GET", f"/api/v1/conversations/{i.conversation_id}/messages", as_user=PAT
        ),
        {403, 404},
    ),
    ("GET", "/api/v1/audit/conversations/{conversation_id}"): (
        lambda n, s, i: s.http(
            "GET", f"/api/v1/audit/conversations/{i.conversation_id}", as_user=ADMIN
        ),
        {404},
    ),
    ("GET", "/api/v1/clinic/hours"): (
        lambda n, s, i: s.http("GET", "/api/v1/clinic/hours", as_user=PAT),
        {404},
    ),
    ("PUT", "/api/v1/clinic/hours"): (
        lambda n, s, i: s.http(
            "PUT", "/api/v1/clinic/hours", {"timezone": "Asia/Tokyo", "weekly": EVERY_DAY}
        ),
        {200},
    ),
    ("GET", "/api/v1/clinic/retention"): (
        lambda n, s, i: s.http("GET", "/api/v1/clinic/retention"),
        {200},
    ),
    ("PUT", "/api/v1/clinic/retention"): (
        lambda n, s, i: s.http("PUT", "/api/v1/clinic/retention", {"messages": 30}),
        {200},
    ),
    ("GET", "/api/v1/holds"): (lambda n, s, i: s.http("GET", "/api/v1/holds"), {200}),
    ("PUT", "/api/v1/holds/{hold_id}"): (
        lambda n, s, i: s.http(
            "PUT", "/api/v1/holds/other-hold", {"patient_id": PAT, "reason": "audit"}
        ),
        {200},
    ),
    ("DELETE", "/api/v1/holds/{hold_id}"): (
        lambda n, s, i: s.http("DELETE", "/api/v1/holds/home-hold"),
        {404},
    ),
    ("POST", "/api/v1/exports"): (
        lambda n, s, i: s.http("POST", "/api/v1/exports", {"patient_id": PAT}),
        {202},
    ),
    ("GET", "/api/v1/exports/{export_id}"): (
        lambda n, s, i: s.http("GET", f"/api/v1/exports/{i.export_id}"),
        {404},
    ),
    ("GET", "/api/v1/exports/{export_id}/{kind}"): (
        lambda n, s, i: s.http("GET", f"/api/v1/exports/{i.export_id}/bundle", as_user=PAT),
        {404},
    ),
    ("POST", "/api/v1/events/appointments"): (
        lambda n, s, i: s.http(
            "POST", "/api/v1/events/appointments", appointment_event("apt-other-1")
        ),
        {200},
    ),
    ("POST", "/api/v1/fhir/subscription"): (
        lambda n, s, i: s.http(
            "POST",
            "/api/v1/fhir/subscription",
            {"resourceType": "Bundle", "type": "history", "entry": []},
        ),
        {400},
    ),
    ("PUT", "/api/v1/users/{user_id}"): (
        lambda n, s, i: s.http("PUT", f"/api/v1/users/{PAT}", {"name": "Pat", "role": "patient"}),
        {200},
    ),
    ("PUT", "/api/v1/users/{user_id}/contact"): (
        lambda n, s, i: s.http(
            "PUT",
            f"/api/v1/users/{PAT}/contact",
            {"phone": "+14155550999", "timezone": "Asia/Tokyo", "sms_opt_in": False},
        ),
        {200},
    ),
    ("PUT", "/api/v1/pools/{pool_id}"): (
        lambda n, s, i: s.http("PUT", "/api/v1/pools/other", {"name": "S", "member_ids": []}),
        {200},
    ),
    ("GET", "/api/v1/pools/{pool_id}"): (
        lambda n, s, i: s.http("GET", "/api/v1/pools/triage"),
        {404},
    ),
    ("DELETE", "/api/v1/pools/{pool_id}"): (
        lambda n, s, i: s.http("DELETE", "/api/v1/pools/triage"),
        {404},
    ),
    # The other's own nurse (home's is never touched: checked after).
    ("GET", "/api/v1/users/{user_id}"): (
        lambda n, s, i: s.http("GET", f"/api/v1/users/{NURSE}"),
        {200},
    ),
    ("DELETE", "/api/v1/users/{user_id}"): (
        lambda n, s, i: s.http("DELETE", f"/api/v1/users/{NURSE}"),
        {200},
    ),
    ("GET", "/api/v1/users/{user_id}/devices"): (
        lambda n, s, i: s.http("GET", f"/api/v1/users/{PAT}/devices"),
        {200},  # the other's own patient's devices, none of home's
    ),
    ("DELETE", "/api/v1/users/{user_id}/devices/{device_id}"): (
        lambda n, s, i: s.http("DELETE", f"/api/v1/users/{PAT}/devices/{i.device_id}"),
        {404},
    ),
    ("POST", "/api/v1/users/{user_id}/revoke"): (
        lambda n, s, i: s.http("POST", f"/api/v1/users/{NURSE}/revoke"),
        {200},
    ),
    ("GET", "/api/v1/push/vapid-public-key"): (
        lambda n, s, i: s.http("GET", "/api/v1/push/vapid-public-key"),
        {404},
    ),
    ("GET", "/api/v1/webhooks"): (lambda n, s, i: s.http("GET", "/api/v1/webhooks"), {200}),
    ("PUT", "/api/v1/webhooks/{name}"): (
        lambda n, s, i: s.http(
            "PUT",
            "/api/v1/webhooks/other-hook",
            {"url": "http://127.0.0.1:9/other", "events": ["message.stored"]},
        ),
        {200},
    ),
    ("DELETE", "/api/v1/webhooks/{name}"): (
        lambda n, s, i: s.http("DELETE", "/api/v1/webhooks/home-hook"),
        {404},
    ),
    ("GET", "/api/v1/webhooks/{name}/dead"): (
        lambda n, s, i: s.http("GET", "/api/v1/webhooks/home-hook/dead"),
        {200},  # none of the other's deliveries is dead
    ),
    ("POST", "/api/v1/webhooks/{name}/rotate"): (
        lambda n, s, i: s.http("POST", "/api/v1/webhooks/home-hook/rotate"),
        {404},
    ),
    ("POST", "/api/v1/webhooks/{name}/replay"): (
        lambda n, s, i: s.http("POST", "/api/v1/webhooks/home-hook/replay", {"ids": []}),
        {200},  # nothing of the other's to replay
    ),
    # The platform operator's: a clinic's key or token opens none of them.
    ("GET", "/api/v1/clinics"): (lambda n, s, i: s.http("GET", "/api/v1/clinics"), {401}),
    ("GET", "/api/v1/clinics/{tenant_id}"): (
        lambda n, s, i: s.http("GET", f"/api/v1/clinics/{i.tenant}"),
        {401},
    ),
    ("PUT", "/api/v1/clinics/{tenant_id}"): (
        lambda n, s, i: s.http("PUT", f"/api/v1/clinics/{i.tenant}", {"state": "suspended"}),
        {401},
    ),
    ("DELETE", "/api/v1/clinics/{tenant_id}"): (
        lambda n, s, i: s.http("DELETE", f"/api/v1/clinics/{i.tenant}"),
        {401},
    ),
    # Twilio's requests name their clinic in the URL it signs; unsigned ones are refused
    # before any clinic is looked at (tests/functional/test_tenancy_functional.py's SMS
    # test sends signed ones).
    ("POST", "/webhooks/twilio/status"): (
        lambda n, s, i: s.http("POST", f"/webhooks/twilio/status?tenant={i.tenant}"),
        {403},
    ),
    ("POST", "/webhooks/twilio/inbound"): (
        lambda n, s, i: s.http("POST", f"/webhooks/twilio/inbound?tenant={i.tenant}"),
        {403},
    ),
}


async def check_routes(hub: HubFixture, home: Clinic, other: Clinic, ids: HomeIds) -> None:
    routed = {
        (route.method, route.resource.canonical)
        for route in hub.app().router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and route.resource.canonical.startswith(("/api/", "/webhooks/"))
    }
    assert routed == set(ROUTES), (routed - set(ROUTES), set(ROUTES) - routed)
    wrong = []
    for route, (attempt, statuses) in ROUTES.items():
        status, body = await attempt(home, other, ids)
        assert not leaks(body, ids), (route, body)
        if status not in statuses:
            wrong.append((route, status, body))
    assert not wrong, wrong
    # A key names its clinic; naming another does not open that one's database.
    assert (await _forged_key(home, other, ids))[0] == 401
    # Home's signed links: whole, they work; naming any other clinic, their
    # signature fails.
    for link in (ids.signed_attachment, ids.signed_export):
        assert await signed_get(hub, link) == 200
        for tenant in set(hub.settings.tenant_ids) - {home.tenant}:
            assert await signed_get(hub, link, tenant) == 401, tenant
    # What the other's back-end wrote stayed the other's: home's directory, contact,
    # hours and hold are as home's back-end left them.
    services = hub.app()[TENANTS][home.tenant]
    assert (await services.directory.people([PAT]))[PAT]["name"] == f"Pat of {home.tenant}"
    hours = await services.clinic.hours()
    assert hours is not None and hours.zone.key == "UTC"
    assert [h["_id"] for h in await services.retention.store.holds()] == ["home-hold"]
    status, raw = await home.http("GET", "/api/v1/webhooks")
    assert b"home-hook" in raw and b"other-hook" not in raw
    # The other removed and revoked its own nurse: home's is in its pool, and connected.
    assert (await services.pools.find("triage") or {}).get("member_ids") == [NURSE]
    assert await services.revocations.revoked_at(NURSE) is None
    assert (await home.people[NURSE].call("session:me", {}))["ok"]


async def test_each_clinic_texts_with_its_own_name_and_sender_and_gets_its_own_callbacks(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
):
    north_settings = [
        {"tenant_id": NORTH, "clinic_name": "North Clinic", "twilio_from_number": "+14155550111"}
    ]
    async with own_stack(
        mongodb_server, tmp_path, settings, HUB_TENANTS=orjson.dumps(north_settings).decode()
    ) as (stack, hub):
        stack.start_worker()
        await hub.start()
        tenants = hub.app()[TENANTS]
        north = Backend(hub, await tenants[NORTH].service_keys.create("backend"))
        default = Backend(hub, await tenants["default"].service_keys.create("backend"))
        # The same patient id in both clinics, each with a phone of their own.
        north_phone, default_phone = new_phone(), new_phone()
        assert (await north.put_contact(PAT, north_phone))[0] == 200
        assert (await default.put_contact(PAT, default_phone))[0] == 200
        north_cause = await north.appointment(PAT)
        default_cause = await default.appointment(PAT)
        client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
        try:
            north_db = client[database_name(stack.db_name, NORTH)]
            default_db = client[stack.db_name]
            north_row = await outbox(north_db, f"notification:{north_cause}", "queued", "sent")
            await outbox(default_db, f"notification:{default_cause}", "queued", "sent")
            [north_sms] = stack.twilio.to(north_phone)
            [default_sms] = stack.twilio.to(default_phone)
            assert north_sms["from"] == "+14155550111"
            assert north_sms["body"].startswith("North Clinic: ")
            assert default_sms["from"] == "+14155550000"
            assert not default_sms["body"].startswith("North")
            assert north_sms["status_callback"].endswith(f"/webhooks/twilio/status?tenant={NORTH}")
            assert "tenant=" not in default_sms["status_callback"]
            # Twilio's callback for North's SMS moves North's row; told to the default
            # clinic, the same sid finds nothing there.
            delivered = {"MessageSid": north_row["sid"], "MessageStatus": "delivered"}
            path = f"/webhooks/twilio/status?tenant={NORTH}"
            assert (await north.twilio_post(path, delivered))[0] == 204
            await until_async(
                lambda: north_db.sms_outbox.find_one(
                    {"sid": north_row["sid"], "state": "delivered"}
                )
            )
            failed = {**delivered, "MessageStatus": "failed"}
            assert (await default.twilio_post("/webhooks/twilio/status", failed))[0] == 204
            row = await north_db.sms_outbox.find_one({"sid": north_row["sid"]})
            assert row is not None and row["state"] == "delivered"
            unknown = {**delivered, "MessageStatus": "failed"}
            assert (await north.twilio_post("/webhooks/twilio/status?tenant=east", unknown))[
                0
            ] == 404
        finally:
            await client.close()
