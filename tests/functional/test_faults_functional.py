"""The fault suite: hubs as real processes, killed, stopped and starved under load,
with MongoDB and Redis stopped under them. What each fault costs a user is in
docs/operations.md ("What a fault costs"); the times measured here are written to
``test-artifacts/faults.json`` (or ``HUB_TEST_ARTIFACTS``).

Marked ``fault``: ``./dev test -m 'not fault'`` skips it; ``.ci/run`` runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hub.core.settings import Settings
from hub.server import embedded
from tests.support.faults import (
    FailoverProxy,
    HubProcess,
    Load,
    Outcomes,
    all_messages,
    check_conversation,
    connect,
    hub_env,
    resend,
    send_loop,
)
from tests.support.hubs import TIMEOUT, Client
from tests.support.raw_socket import raw_socket

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HUB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SENDERS = 4


def record(name: str, figures: dict[str, Any]) -> None:
    """Keep a measured figure for docs/operations.md."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "faults.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known[name] = figures
    path.write_text(json.dumps(known, indent=2, sort_keys=True))


async def until_true(check: Any, timeout: float = 30.0, every: float = 0.1) -> float:
    """Poll the coroutine ``check()`` until it is truthy; the seconds it took."""
    started = time.monotonic()

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(every)

    await asyncio.wait_for(poll(), timeout)
    return time.monotonic() - started


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()


async def open_conversation(
    settings: Settings, url: str, clients: list[Client], name: str
) -> tuple[Client, Client, str]:
    doctor = await connect(settings, url, f"dr-{name}", "doctor")
    patient = await connect(settings, url, f"pat-{name}", "patient")
    clients += [doctor, patient]
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    assert opened["ok"], opened
    return doctor, patient, opened["conversation"]["id"]


async def reconnected(client: Client, times: int, timeout: float = 30.0) -> None:
    async def wait() -> None:
        while len(client.recorder.of("connect")) < times:
            await client.recorder.wait_for("connect", timeout=timeout)
            await asyncio.sleep(0.02)  # the recorder's condition may wake before the append

    await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def two_hubs(settings: Settings) -> AsyncIterator[tuple[HubProcess, HubProcess, str]]:
    """Two hub processes behind a failover proxy; the proxy's URL is the third item."""
    first = await HubProcess.start(hub_env(settings))
    second = await HubProcess.start(hub_env(settings))
    proxy = await FailoverProxy([first.port, second.port]).start()
    yield first, second, proxy.url
    await proxy.close()
    first.kill()
    await first.stop()
    await second.stop()


async def busy_conversation(
    settings: Settings, url: str, clients: list[Client], name: str
) -> tuple[Client, str, Load]:
    """A patient, their conversation, and the doctor's devices sending into it: once
    100 messages are acked."""
    doctor, patient, conversation_id = await open_conversation(settings, url, clients, name)
    load = await Load.start(settings, url, doctor, conversation_id, SENDERS, clients)
    await until_true(lambda: _true(load.acked_count() >= 100))
    return patient, conversation_id, load


async def test_a_hub_killed_under_load_loses_no_acked_message(
    settings: Settings, clients: list[Client], two_hubs: tuple[HubProcess, HubProcess, str]
):
    """kill -9 of one of two hubs while four devices send: they fail over to the other
    hub, resend what got no answer with the same client_id, and the conversation has
    every acked message once, with seq gap-free; the patient's `sync` fills the gap."""
    first, _, url = two_hubs
    patient, conversation_id, load = await busy_conversation(settings, url, clients, "kill9")
    killed_at = time.monotonic()
    first.kill()
    await asyncio.gather(*(reconnected(s, 2) for s in load.senders))
    failover = time.monotonic() - killed_at
    failed_over_at = load.acked_count()  # the other hub takes the load: 100 more
    await until_true(lambda: _true(load.acked_count() >= failed_over_at + 100))
    await load.finish()

    messages = await all_messages(patient, conversation_id)
    check_conversation(messages, load.acked())
    record(
        "hub_killed",
        {
            "acked": len(load.acked()),
            "unanswered_then_resent": sum(len(o.lost) for o in load.outcomes),
            "failover_seconds": round(failover, 2),
        },
    )


async def test_mongodb_paused_then_killed_answers_no_false_ack_and_recovers(
    settings: Settings, clients: list[Client], tmp_path: Path
):
    """MongoDB stops answering (SIGSTOP), then dies (SIGKILL) and comes back: no send
    is acked while it is away, readiness says 503 and then 200, and sends work again
    without restarting the hub."""
    store = embedded.start_mongodb(tmp_path / "mongodb")
    port = int(store.url.rsplit(":", 1)[1].split("/")[0])
    hub = await HubProcess.start(hub_env(replace(settings, mongodb_url=store.url)))
    try:
        doctor, patient, conversation_id = await open_conversation(
            settings, hub.url, clients, "mongo"
        )
        outcome, stop = Outcomes(), asyncio.Event()
        sending = asyncio.ensure_future(send_loop(doctor, conversation_id, "m", outcome, stop))
        await until_true(lambda: _true(len(outcome.acked) >= 50))

        os.kill(store.process.pid, signal.SIGSTOP)
        paused_at = len(outcome.acked)
        await until_true(lambda: _status_is(hub, 503))
        await until_true(lambda: _true(len(outcome.unavailable) >= 2))
        acked_while_down = len(outcome.acked) - paused_at
        store.process.kill()  # SIGKILL while stopped
        store.process.wait(TIMEOUT)
        store = await asyncio.to_thread(embedded.start_mongodb, tmp_path / "mongodb", port=port)
        back_after = await until_true(lambda: _status_is(hub, 200))
        await until_true(lambda: _true(len(outcome.acked) >= paused_at + 20))
        stop.set()
        await sending

        # A send that was answered `unavailable` was not stored, or is settled by a
        # resend with its client_id; an acked one while MongoDB was stopped is false.
        assert acked_while_down <= 1  # at most the one whose write MongoDB took first
        messages = await all_messages(patient, conversation_id)
        stored = {m["client_id"] for m in messages}
        # Every acked message survived the kill -9: the embedded store journals each
        # insert before it answers (it lost 5 of 92 when its URL asked for no journal).
        lost = [c for c in outcome.acked if c not in stored]
        assert lost == []
        record(
            "mongodb_paused_killed",
            {
                "acked": len(outcome.acked),
                "unavailable": len(outcome.unavailable),
                "ready_again_seconds": round(back_after, 2),
                "acked_then_lost_by_the_embedded_store": len(lost),
            },
        )
        await resend(doctor, conversation_id, outcome.unavailable + outcome.lost, outcome)
        seqs = [m["seq"] for m in await all_messages(patient, conversation_id)]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        await hub.stop()
        store.stop()


async def test_redis_restart_brings_back_listeners_presence_and_fanout(
    settings: Settings, clients: list[Client], tmp_path: Path
):
    """Redis restarted under two hubs: readiness, presence and the cross-hub fan-out
    come back by themselves; how long each took is recorded."""
    redis_port = embedded.free_port()
    redis = embedded.start_redis(tmp_path / "redis", port=redis_port)
    env_settings = replace(settings, redis_url=redis.url)
    first = await HubProcess.start(hub_env(env_settings))
    second = await HubProcess.start(hub_env(env_settings))
    try:
        doctor = await connect(settings, first.url, "dr-redis", "doctor")
        patient = await connect(settings, second.url, "pat-redis", "patient")
        clients += [doctor, patient]
        opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
        conversation_id = opened["conversation"]["id"]

        await asyncio.to_thread(redis.stop)
        restarted_at = time.monotonic()
        redis = await asyncio.to_thread(embedded.start_redis, tmp_path / "redis", port=redis_port)
        ready = max([await until_true(lambda h=h: _status_is(h, 200)) for h in (first, second)])

        async def presence_back() -> bool:
            ack = await doctor.call("presence:query", {"user_ids": [patient.user_id]})
            return bool(ack.get("ok") and ack["online"][patient.user_id])

        presence = await until_true(presence_back, every=0.5)
        n = [0]

        async def fanout_back() -> bool:
            n[0] += 1
            body = f"after-restart-{n[0]}"
            ack = await doctor.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": body, "body": body},
            )
            if not ack.get("ok"):
                assert ack["error"]["code"] == "unavailable", ack
                return False
            try:
                await patient.wait_for(
                    "message:new", lambda d: d["message"]["body"] == body, timeout=1.0
                )
            except TimeoutError:
                return False
            return True

        fanout = await until_true(fanout_back)
        total = time.monotonic() - restarted_at
        record(
            "redis_restart",
            {
                "ready_seconds": round(ready, 2),
                "presence_seconds": round(presence, 2),
                "fanout_seconds": round(fanout, 2),
                "all_back_seconds": round(total, 2),
            },
        )
    finally:
        await first.stop()
        await second.stop()
        redis.stop()


async def test_sigterm_under_load_answers_every_send_and_loses_nothing(
    settings: Settings, clients: list[Client], two_hubs: tuple[HubProcess, HubProcess, str]
):
    """SIGTERM to one of two hubs while four devices send: every send in flight is
    answered (ok or unavailable), the devices move to the other hub, and after their
    resends the conversation is complete, once each."""
    first, _, url = two_hubs
    patient, conversation_id, load = await busy_conversation(settings, url, clients, "term")
    assert await first.stop() == 0, first.text()
    assert "shutdown:" in first.text()
    await asyncio.gather(*(reconnected(s, 2) for s in load.senders))
    await load.finish()

    check_conversation(await all_messages(patient, conversation_id), load.acked())
    record(
        "sigterm",
        {
            "acked": len(load.acked()),
            "unavailable": sum(len(o.unavailable) for o in load.outcomes),
            "unanswered": sum(len(o.lost) for o in load.outcomes),
        },
    )


async def test_a_stalled_consumer_is_dropped_and_the_hubs_memory_stays_bounded(
    settings: Settings, clients: list[Client]
):
    """A device that handshakes, joins and never reads, in a conversation others keep
    writing to: its socket is dropped and the hub's resident memory grows by a few MB
    at most (it grew 25 MB a minute)."""
    hub = await HubProcess.start(
        hub_env(settings, HUB_SOCKET_QUEUE_BYTES=str(512 * 1024), HUB_MAX_BODY_CHARS="4000")
    )
    try:
        doctor, patient, conversation_id = await open_conversation(
            settings, hub.url, clients, "stall"
        )
        from hub.core.auth import issue_token

        async with raw_socket(hub.url, issue_token(settings, patient.user_id, "patient")):
            body = "x" * 3900
            for n in range(50):  # warm up: the hub's own allocations settle
                await doctor.call(
                    "message:send",
                    {"conversation_id": conversation_id, "client_id": f"w{n}", "body": body},
                )
            before = hub.rss_bytes()
            peak = before
            for n in range(3000):  # about 12 MB toward the stalled socket
                ack = await doctor.call(
                    "message:send",
                    {"conversation_id": conversation_id, "client_id": f"f{n}", "body": body},
                )
                assert ack["ok"], ack
                if n % 100 == 0:
                    peak = max(peak, hub.rss_bytes())
            dropped = await hub.metric('hub_dropped_sockets_total{reason="slow_consumer"}')
        growth = peak - before
        record(
            "stalled_consumer",
            {"rss_growth_mb": round(growth / 2**20, 1), "sent_mb": round(3000 * 3900 / 2**20, 1)},
        )
        assert dropped == 1
        assert growth < 6 * 2**20, f"the hub grew {growth / 2**20:.1f} MB"
        # The patient's other device still gets everything, live.
        pushed = await patient.wait_for(
            "message:new", lambda d: d["message"]["client_id"] == "f2999"
        )
        assert pushed["message"]["seq"] == 3050
    finally:
        await hub.stop()


async def _true(value: bool) -> bool:
    return value


async def _status_is(hub: HubProcess, status: int) -> bool:
    try:
        return (await hub.ready())[0] == status
    except Exception:
        return False
