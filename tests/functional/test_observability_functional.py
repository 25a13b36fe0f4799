"""GET /metrics, JSON logs with request ids and without PHI, readiness of listeners."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from hub.core import logs
from hub.core.settings import Settings
from hub.server import embedded
from storage import names
from storage.tenants import database_name
from tests.support.chat import open_pair, send
from tests.support.hubs import TIMEOUT, HubFixture
from workers.metrics import CELERY_QUEUE, serve_metrics


async def scrape(hub: HubFixture) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(str(hub.servers[0].make_url("/metrics"))) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_connections_events_acks_and_writes(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    for n in range(3):
        await send(doctor, conversation_id, f"m{n}")
    refused = await patient.call("message:send", {"conversation_id": conversation_id})
    assert refused["error"]["code"] == "bad_request"
    m = await scrape(hub)
    assert m[("hub_connected_sockets", ())] == 2
    assert m[("hub_connected_users", ())] == 2
    assert m[("hub_connections_total", (("outcome", "accepted"),))] == 2
    ok = (("event", "message:send"), ("outcome", "ok"))
    assert m[("hub_events_total", ok)] == 3
    assert m[("hub_events_total", (("event", "message:send"), ("outcome", "bad_request")))] == 1
    assert m[("hub_ack_seconds_count", (("event", "message:send"),))] == 4
    assert m[("hub_mongodb_write_seconds_count", (("operation", "messages"),))] >= 1
    assert m[("hub_appointments_stream_lag", ())] == 0
    assert m[("hub_appointments_stream_pending", ())] == 0
    listeners = ("appointments_stream", "appointments_channel", "socketio_fanout", "control")
    for listener in listeners:
        assert m[("hub_listener_alive", (("listener", listener),))] == 1
    await patient.sio.disconnect()

    async def one_left() -> dict:
        while (m := await scrape(hub))[("hub_connected_sockets", ())] != 1:
            await asyncio.sleep(0.02)  # the hub handles the disconnect asynchronously
        return m

    m = await asyncio.wait_for(one_left(), TIMEOUT)
    assert m[("hub_connected_users", ())] == 1


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The hub's real logging set-up, at DEBUG, into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.configure("DEBUG", "json", stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def test_json_logs_carry_request_ids_and_never_the_body(
    hub: HubFixture, log_lines: io.StringIO
):
    doctor, patient, conversation_id = await open_pair(hub)
    secret = "chest pain since tuesday 4521"
    await send(doctor, conversation_id, secret)
    await patient.wait_for("message:new")
    refused = await doctor.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": "c-x", "body": secret * 500},
    )
    assert refused["error"]["code"] == "bad_request"
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert lines, "nothing was logged"
    assert not [line for line in lines if "chest pain" in json.dumps(line)]
    handled = [line for line in lines if line.get("event") == "message:send"]
    assert [line["outcome"] for line in handled] == ["ok", "bad_request"]
    for line in handled:
        assert line["level"] == "INFO" and len(line["request_id"]) == 16
        assert line["user_id"] == doctor.user_id
    assert handled[0]["request_id"] != handled[1]["request_id"]
    assert any(line["msg"].startswith("connected user=") for line in lines)


async def test_worker_metrics_count_the_outbox_and_the_queue(settings: Settings):
    """The worker's /metrics, over HTTP, from real MongoDB and Redis: every served
    clinic's outbox (the registry's), in one series per state unless
    HUB_METRICS_PER_CLINIC (a label per clinic grew the series with the clinics)."""
    port = embedded.free_port()
    # A broker database of its own: other tests' hubs enqueue into the default one.
    broker = urlsplit(settings.redis_url or "")._replace(path="/9").geturl()
    settings = replace(settings, worker_metrics_port=port, celery_broker_url=broker)
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_url, timeoutMS=5000)
    outbox = client[settings.mongodb_db][names.SMS_OUTBOX]
    await outbox.insert_many(
        [
            {"_id": "notification:a", "state": "sent"},
            {"_id": "notification:b", "state": "sent"},
            {"_id": "notification:c", "state": "skipped", "reason": "stopped"},
        ]
    )
    await client[settings.mongodb_db][names.CLINICS].insert_one({"_id": "north", "state": "active"})
    north = client[database_name(settings.mongodb_db, "north")][names.SMS_OUTBOX]
    await north.insert_one({"_id": "notification:n", "state": "sent"})
    await client.close()
    redis = Redis.from_url(settings.broker_url)
    await redis.rpush(CELERY_QUEUE, "task-1", "task-2")
    try:
        await asyncio.to_thread(serve_metrics, settings)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
    finally:
        await redis.delete(CELERY_QUEUE)
        await redis.aclose()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("hub_worker_scrape_ok", ())] == 1
    sms = "hub_sms_outbox"
    assert samples[(sms, (("reason", ""), ("state", "sent"), ("tenant", "all")))] == 3
    assert samples[(sms, (("reason", "stopped"), ("state", "skipped"), ("tenant", "all")))] == 1
    assert not [
        labels for name, labels in samples if name == sms and ("tenant", "all") not in labels
    ]
    assert samples[("hub_worker_queue_length", ())] == 2
