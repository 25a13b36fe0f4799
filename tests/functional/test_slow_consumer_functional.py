"""A client that stops reading: its socket is dropped at the queue's bound, and the
hub's memory and everybody else's deliveries do not suffer meanwhile."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from hub.compat import engineio as engineio_compat
from hub.compat.engineio import MeteredQueue
from hub.core.rooms import DEFAULT_ROOMS
from hub.server.appkeys import ROUTER, SERVICES
from tests.support.hubs import HubFixture, until
from tests.support.raw_socket import raw_socket

BOUND = 256 * 1024
PAYLOAD = "x" * 16 * 1024  # 16 KiB a push, so a few MiB overflow the kernel's buffers


async def test_a_client_that_stops_reading_is_dropped_at_the_queues_bound(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    """Its queue grew without bound (25 MB a minute) while it answered pings."""
    server = await hub.start(
        replace(hub.settings, socket_queue_bytes=BOUND, socket_queue_packets=10_000)
    )
    app = server.app
    sio, router = app[SERVICES].sio, app[ROUTER]
    patient_id = hub.user("stalled")
    reader = await hub.connect(patient_id, "patient", server=len(hub.servers) - 1)
    biggest = 0

    async with raw_socket(str(server.make_url("/")), hub.token(patient_id, "patient")):
        await until(lambda: len(router.connections) == 2)
        stalled_sid = next(sid for sid in router.connections if sid != reader.sio.get_sid())
        stalled_eio = sio.manager.eio_sid_from_sid(stalled_sid, "/")
        queue = sio.eio.sockets[stalled_eio].queue
        # What hub/compat/engineio.py relies on in engineio: its sockets' queues come
        # from create_queue, and its WebSocket driver gets the socket's bound reader.
        assert isinstance(queue, MeteredQueue)
        assert sio.eio.sockets[stalled_eio] in engineio_compat._transports
        for n in range(400):  # 6.4 MiB in all
            await sio.emit(
                "notification:read", {"ids": [f"{n}", PAYLOAD]}, to=DEFAULT_ROOMS.user(patient_id)
            )
            biggest = max(biggest, queue.bytes)
            await asyncio.sleep(0)  # let the writers run, as between real emits
        await until(lambda: stalled_sid not in router.connections)
        # The one who reads got every push, in order, while the other was dropped.
        await reader.wait_for("notification:read", lambda d: d["ids"][0] == "399", timeout=10)
        assert [int(d["ids"][0]) for d in reader.recorder.of("notification:read")] == list(
            range(400)
        )

    assert biggest <= BOUND
    dropped = app[SERVICES].metrics.dropped_sockets.labels("slow_consumer")._value.get()
    assert dropped == 1
    assert "does not read" in caplog.text
    assert stalled_eio not in sio.eio.sockets
