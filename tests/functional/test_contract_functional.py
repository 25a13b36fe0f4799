"""Each event of docs/protocol.md, its refusals and its bad inputs, against a real hub."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import jwt
import pytest
import socketio

from hub.core.settings import RateLimit, Settings
from hub.server.appkeys import ROUTER, SERVICES
from tests.support.chat import code, open_pair, send
from tests.support.hubs import JWT_SECRET, TIMEOUT, Client, HubFixture, MakeHub

# --- Authentication -------------------------------------------------------------------


def _token(**claims: object) -> str:
    base: dict[str, object] = {"sub": "u1", "role": "patient", "exp": int(time.time()) + 60}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, JWT_SECRET, "HS256")


REFUSED_TOKENS = {
    "missing": None,
    "garbage": "not-a-jwt",
    "expired": _token(exp=int(time.time()) - 3600),
    "wrong key": jwt.encode(
        {"sub": "u1", "role": "patient", "exp": int(time.time()) + 60}, "x" * 40, "HS256"
    ),
    "alg none": jwt.encode(
        {"sub": "u1", "role": "patient", "exp": int(time.time()) + 60}, None, "none"
    ),
    "no exp": _token(exp=None),
    "no role": _token(role=None),
    "unknown role": _token(role="superuser"),
    "sub not an id": _token(sub="a b/c"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_TOKENS))
async def test_connection_with_bad_token_is_refused_as_unauthorized(hub: HubFixture, case: str):
    client = Client("u1", "patient", REFUSED_TOKENS[case] or "")
    auth = {"token": REFUSED_TOKENS[case]} if REFUSED_TOKENS[case] else {}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            str(hub.servers[0].make_url("/")),
            auth=auth,
            transports=["websocket"],
            wait_timeout=TIMEOUT,
        )
    # python-socketio hands over the whole CONNECT_ERROR payload; the JS client's err.data
    # is its "data" member.
    assert client.connect_error["data"]["code"] == "unauthorized"
    assert client.connect_error["data"]["message"] == client.connect_error["message"]
    assert hub.app()[ROUTER].connections == {}


async def test_authorization_header_is_accepted(hub: HubFixture):
    user_id = hub.user("pat")
    client = Client(user_id, "patient", hub.token(user_id, "patient"))
    hub.clients.append(client)
    await client.sio.connect(
        str(hub.servers[0].make_url("/")),
        headers={"Authorization": f"Bearer {client.token}"},
        transports=["websocket"],
        wait_timeout=TIMEOUT,
    )
    assert (await client.call("conversation:list", {}))["ok"]


# --- Conversations ---------------------------------------------------------------------


async def test_open_is_idempotent_per_member_set_and_appointment(hub: HubFixture):
    doctor = await hub.connect(hub.user("doc"), "doctor")
    patient_id = hub.user("pat")
    first = await doctor.call("conversation:open", {"member_ids": [patient_id]})
    again = await doctor.call("conversation:open", {"member_ids": [patient_id, doctor.user_id]})
    other = await doctor.call(
        "conversation:open", {"member_ids": [patient_id], "appointment_id": "apt-1"}
    )
    assert first["conversation"]["id"] == again["conversation"]["id"]
    assert other["conversation"]["id"] != first["conversation"]["id"]
    assert other["conversation"]["appointment_id"] == "apt-1"
    assert sorted(first["conversation"]["member_ids"]) == sorted([doctor.user_id, patient_id])
    assert first["conversation"]["last_seq"] == 0


async def test_patient_cannot_open_a_conversation(hub: HubFixture):
    patient = await hub.connect(hub.user("pat"), "patient")
    ack = await patient.call("conversation:open", {"member_ids": [hub.user("doc")]})
    assert code(ack) == "forbidden"


async def test_list_shows_only_the_callers_conversations_with_cursors(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    outsider = await hub.connect(hub.user("out"), "patient")
    await send(doctor, conversation_id, "a")
    await send(doctor, conversation_id, "b")
    assert (await patient.call("message:read", {"conversation_id": conversation_id, "seq": 1}))[
        "ok"
    ]
    listed = await patient.call("conversation:list", {})
    assert listed["conversations"] == [
        {**listed["conversations"][0], "id": conversation_id, "last_seq": 2, "read_seq": 1}
    ]
    assert (await outsider.call("conversation:list", {}))["conversations"] == []


# --- Membership -------------------------------------------------------------------------


async def test_non_members_learn_nothing(hub: HubFixture):
    doctor, _, conversation_id = await open_pair(hub)
    await send(doctor, conversation_id, "secret")
    outsider = await hub.connect(hub.user("out"), "doctor")
    calls = [
        ("message:send", {"conversation_id": conversation_id, "client_id": "x", "body": "hi"}),
        ("message:history", {"conversation_id": conversation_id}),
        ("message:read", {"conversation_id": conversation_id, "seq": 1}),
        ("typing", {"conversation_id": conversation_id, "typing": True}),
        ("sync", {"cursors": {conversation_id: 0}}),
    ]
    for event, payload in calls:
        assert code(await outsider.call(event, payload)) == "forbidden", event
    for event, payload in calls[:4]:
        unknown = {**payload, "conversation_id": "c_doesnotexist"}
        assert code(await outsider.call(event, unknown)) == "not_found", event
    assert outsider.recorder.of("message:new") == []


# --- Read cursors, typing, sync ---------------------------------------------------------


async def test_read_cursor_moves_forward_only_and_is_broadcast(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    for n in range(3):
        await send(doctor, conversation_id, f"m{n}")
    assert (await patient.call("message:read", {"conversation_id": conversation_id, "seq": 2}))[
        "ok"
    ]
    read = await doctor.wait_for("message:read")
    assert read == {
        "conversation_id": conversation_id,
        "user_id": patient.user_id,
        "name": patient.user_id,  # no name known: the id
        "seq": 2,
    }
    assert (await patient.call("message:read", {"conversation_id": conversation_id, "seq": 1}))[
        "ok"
    ]
    assert (await patient.call("message:read", {"conversation_id": conversation_id, "seq": 3}))[
        "ok"
    ]
    await doctor.wait_for("message:read", lambda d: d["seq"] == 3)
    assert [d["seq"] for d in doctor.recorder.of("message:read")] == [2, 3]
    listed = await patient.call("conversation:list", {})
    assert listed["conversations"][0]["read_seq"] == 3
    beyond = {"conversation_id": conversation_id, "seq": 99}
    assert code(await patient.call("message:read", beyond)) == "bad_request"


async def test_typing_reaches_other_members_and_is_not_stored(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    ack = await patient.call("typing", {"conversation_id": conversation_id, "typing": True})
    assert ack == {"ok": True}
    got = await doctor.wait_for("typing")
    assert got == {
        "conversation_id": conversation_id,
        "user_id": patient.user_id,
        "name": patient.user_id,  # no name in the token or from the back-end: shown by id
        "typing": True,
    }
    assert patient.recorder.of("typing") == []
    history = await doctor.call("message:history", {"conversation_id": conversation_id})
    assert history["messages"] == []


async def test_offline_member_gets_what_it_missed_through_sync(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    await send(doctor, conversation_id, "seen")
    await patient.wait_for("message:new")
    assert (await patient.call("message:read", {"conversation_id": conversation_id, "seq": 1}))[
        "ok"
    ]
    await patient.sio.disconnect()
    for n in range(3):
        await send(doctor, conversation_id, f"missed-{n}")

    back = await hub.connect(patient.user_id, "patient")
    by_read_cursor = await back.call("sync", {})
    assert [m["body"] for m in by_read_cursor["messages"]] == ["missed-0", "missed-1", "missed-2"]
    assert by_read_cursor["has_more"] is False
    by_client_cursor = await back.call("sync", {"cursors": {conversation_id: 2}})
    assert [m["seq"] for m in by_client_cursor["messages"]] == [3, 4]
    limited = await back.call("sync", {"cursors": {conversation_id: 0}, "limit": 2})
    assert [m["seq"] for m in limited["messages"]] == [1, 2] and limited["has_more"] is True


async def test_sync_survives_a_hub_restart(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    await patient.sio.disconnect()
    await send(doctor, conversation_id, "before restart")
    await hub.stop(hub.servers[0])
    await hub.start()
    back = await hub.connect(patient.user_id, "patient")
    synced = await back.call("sync", {})
    assert [m["body"] for m in synced["messages"]] == ["before restart"]
    doctor_again = await hub.connect(doctor.user_id, "doctor")
    assert (await send(doctor_again, conversation_id, "after"))["message"]["seq"] == 2


# --- Presence ---------------------------------------------------------------------------


async def test_contacts_see_first_arrival_and_last_departure(hub: HubFixture):
    doctor, patient, _ = await open_pair(hub)
    await patient.sio.disconnect()
    await doctor.wait_for(
        "presence",
        lambda d: d == {"user_id": patient.user_id, "name": patient.user_id, "online": False},
    )
    phone = await hub.connect(patient.user_id, "patient")
    await doctor.wait_for(
        "presence",
        lambda d: d == {"user_id": patient.user_id, "name": patient.user_id, "online": True},
    )
    tablet = await hub.connect(patient.user_id, "patient")
    query = await doctor.call("presence:query", {"user_ids": [patient.user_id]})
    assert query == {"ok": True, "online": {patient.user_id: True}}
    await phone.sio.disconnect()
    assert (await doctor.call("presence:query", {"user_ids": [patient.user_id]}))["online"] == {
        patient.user_id: True
    }
    doctor.recorder.events.clear()
    await tablet.sio.disconnect()
    await doctor.wait_for(
        "presence",
        lambda d: d == {"user_id": patient.user_id, "name": patient.user_id, "online": False},
    )
    # The phone leaving while the tablet stayed announced nothing.
    assert doctor.recorder.of("presence") == [
        {"user_id": patient.user_id, "name": patient.user_id, "online": False}
    ]


async def test_patient_may_only_query_presence_of_contacts(hub: HubFixture):
    doctor, patient, _ = await open_pair(hub)
    ok = await patient.call("presence:query", {"user_ids": [doctor.user_id]})
    assert ok["online"] == {doctor.user_id: True}
    assert code(await patient.call("presence:query", {"user_ids": [hub.user("stranger")]})) == (
        "forbidden"
    )


# --- Bad input --------------------------------------------------------------------------

BAD_SENDS = {
    "operator as id": {"conversation_id": {"$gt": ""}, "client_id": "x", "body": "hi"},
    "number as body": {"client_id": "x", "body": 5},
    "missing client_id": {"body": "hi"},
    "blank body": {"client_id": "x", "body": "   "},
    "id with slash": {"client_id": "a/b", "body": "hi"},
    "body too long": {"client_id": "x", "body": "x" * 4001},
}


@pytest.mark.parametrize("case", sorted(BAD_SENDS))
async def test_bad_send_is_bad_request_and_connection_survives(hub: HubFixture, case: str):
    doctor, patient, conversation_id = await open_pair(hub)
    payload = {"conversation_id": conversation_id, **BAD_SENDS[case]}
    ack = await doctor.call("message:send", payload)
    assert code(ack) == "bad_request"
    assert "$gt" not in ack["error"]["message"]
    good = await send(doctor, conversation_id, "after the bad one")
    assert good["ok"] and good["message"]["seq"] == 1
    assert (await patient.wait_for("message:new"))["message"]["body"] == "after the bad one"


@pytest.mark.parametrize(
    "event, args",
    [
        ("message:send", ["not an object"]),
        ("message:send", [[1, 2]]),
        ("message:history", [None]),
        ("message:history", [{"conversation_id": "c_x", "limit": 1000}]),
        ("sync", [{"cursors": {"c_x": "1"}}]),
        ("presence:query", [{"user_ids": "u1"}]),
        ("no-such-event", [{}]),
        ("message:send", [{}, {}]),
    ],
)
async def test_malformed_calls_are_bad_request(hub: HubFixture, event: str, args: list):
    client = await hub.connect(hub.user("doc"), "doctor")
    ack = await client.sio.call(event, tuple(args) if len(args) > 1 else args[0], timeout=TIMEOUT)
    assert code(ack) == "bad_request"
    assert client.sio.connected
    assert (await client.call("conversation:list", {}))["ok"]


async def test_oversized_frame_closes_only_that_connection(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    assert hub.app()[SERVICES].sio.eio.max_http_buffer_size == hub.settings.max_frame_bytes
    flooder = await hub.connect(hub.user("big"), "patient")
    await flooder.sio.emit("message:send", {"body": "x" * (hub.settings.max_frame_bytes + 10)})
    await asyncio.wait_for(flooder.disconnected.wait(), TIMEOUT)
    ack = await send(doctor, conversation_id, "still here")
    assert ack["ok"]
    assert (await patient.wait_for("message:new"))["message"]["body"] == "still here"


# --- Rate limits --------------------------------------------------------------------------


async def test_flooder_is_rate_limited_without_slowing_others(
    make_hub: MakeHub, settings: Settings
):
    limited = replace(settings, rate_conn=RateLimit(5.0, 5.0), rate_user=RateLimit(8.0, 8.0))
    hub = await make_hub(limited)
    doctor, patient, conversation_id = await open_pair(hub)
    typing = {"conversation_id": conversation_id, "typing": True}
    flood = [await patient.call("typing", typing) for _ in range(30)]
    refused = [a for a in flood if not a["ok"]]
    assert refused and all(a["error"]["code"] == "rate_limited" for a in refused)
    assert sum(a["ok"] for a in flood) <= 6  # the burst, plus what refilled meanwhile
    assert (await doctor.call("typing", typing))["ok"]
    assert (await send(doctor, conversation_id, "unaffected"))["ok"]


async def test_a_lost_arrival_is_repaired_by_the_next_refresh(hub: HubFixture):
    """Regression: the heartbeat only extended existing entries, so a socket whose
    arrival Redis did not record (a connection burst, seen in the 5,000-connection
    benchmark) counted as offline for every other hub until it reconnected."""
    from channels.names import presence_key
    from channels.presence import Presence
    from hub.server.appkeys import ROUTER, SERVICES

    patient = await hub.connect(hub.user("lost"), "patient")
    services, router = hub.app()[SERVICES], hub.app()[ROUTER]
    elsewhere = Presence(services.redis, "another-hub", services.settings.presence_ttl)

    async def online_elsewhere() -> bool:
        return (await elsewhere.online([patient.user_id]))[patient.user_id]

    async def arrived() -> None:
        while not await online_elsewhere():
            await asyncio.sleep(0.02)  # the arrival is recorded in the background

    await asyncio.wait_for(arrived(), TIMEOUT)
    await services.redis.delete(
        presence_key(services.tenant, patient.user_id)
    )  # as if it never arrived
    assert not await online_elsewhere()
    await services.presence.refresh((c.user_id, c.sid) for c in router.connections.values())
    assert await online_elsewhere()


async def test_elsewhere_counts_other_hubs_live_sockets_and_says_yes_when_unsure(
    hub: HubFixture,
):
    """What the assistant asks before it leaves other hubs out of a stream's deltas."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from channels.presence import Presence
    from hub.server import embedded

    redis = hub.app()[SERVICES].redis
    here, there = Presence(redis, "hub-a", 30.0), Presence(redis, "hub-b", 30.0)
    later = Presence(redis, "hub-a", 30.0, clock=lambda: time.time() + 60)
    user_id = hub.user("doc")
    assert not await here.elsewhere(user_id)  # no socket anywhere
    await here.arrive(user_id, "sid-1")
    assert not await here.elsewhere(user_id)  # only on this hub
    assert await there.elsewhere(user_id)
    await there.arrive(user_id, "sid-2")
    assert await here.elsewhere(user_id)
    assert not await later.elsewhere(user_id)  # both expired by then
    unreachable = Redis(
        port=embedded.free_port(), socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert await Presence(unreachable, "hub-a", 30.0).elsewhere(user_id)
    finally:
        await unreachable.aclose()
