"""What the fault suite needs: hubs as real processes, a failover proxy in front of
them (as nginx is in production), and senders that keep a conversation busy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.server import embedded
from tests.support.hubs import JWT_SECRET, TIMEOUT, Client, start_hub_process


def hub_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a hub process on ``settings``' servers and database."""
    return {
        **os.environ,
        "HUB_PORT": str(embedded.free_port()),
        "HUB_EMBEDDED": "0",
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_REDIS_URL": settings.redis_url or "",
        "HUB_MONGODB_DB": settings.mongodb_db,
        "HUB_JWT_SECRET": JWT_SECRET,
        "HUB_RATE_CONN_PER_SEC": "1000",
        "HUB_RATE_CONN_BURST": "1000",
        "HUB_RATE_USER_PER_SEC": "1000",
        "HUB_RATE_USER_BURST": "1000",
        "HUB_MONGODB_TIMEOUT": "2",
        "HUB_REDIS_TIMEOUT": "2",
        "HUB_SHUTDOWN_TIMEOUT": "6",
        "HUB_DATA_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / f"hub-{uuid.uuid4().hex}"),
        "HUB_LOG_LEVEL": "INFO",
        **overrides,
    }


@dataclass
class HubProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, env: dict[str, str]) -> HubProcess:
        process, started = await start_hub_process(env, timeout=60)
        hub = cls(process, int(env["HUB_PORT"]), started.splitlines())
        hub._reader = asyncio.ensure_future(hub._read())
        return hub

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return "".join(self.log)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, TIMEOUT)
        return code

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(f"{self.url}/health/ready") as response:
                return response.status, await response.json()

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on this hub's /metrics."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(f"{self.url}/metrics") as response:
                text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024


class FailoverProxy:
    """A TCP proxy that sends each new connection to the first backend that accepts
    it, as nginx does when a hub stops answering. Clearing ``answers`` drops what the
    backends send back (acks lost on the way) until it is set again."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = embedded.free_port()
        self.answers = asyncio.Event()
        self.answers.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FailoverProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), TIMEOUT
                )
            except OSError:
                continue
            for source, sink, valve in (
                (reader, up_writer, None),
                (up_reader, writer, self.answers),
            ):
                task = asyncio.ensure_future(_pipe(source, sink, valve))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, valve: asyncio.Event | None
) -> None:
    try:
        while data := await source.read(65536):
            if valve is None or valve.is_set():
                sink.write(data)
                await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


async def connect(
    settings: Settings, url: str, user_id: str, role: str, reconnection: bool = True
) -> Client:
    """A device that reconnects by itself."""
    client = Client(user_id, role, issue_token(settings, user_id, role), reconnection=reconnection)
    await client.sio.connect(
        url, auth={"token": client.token}, transports=["websocket"], wait_timeout=TIMEOUT
    )
    return client


@dataclass
class Outcomes:
    """What one sender saw: acked client_ids with their seq, refused and lost ones."""

    acked: dict[str, int] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # no answer (connection gone, timeout)


async def send_loop(
    client: Client,
    conversation_id: str,
    prefix: str,
    outcomes: Outcomes,
    stop: asyncio.Event,
    on_ack: Callable[[], None] | None = None,
) -> None:
    """Send messages one after another until ``stop``; record every outcome."""
    n = 0
    while not stop.is_set():
        n += 1
        client_id = f"{prefix}-{n}"
        try:
            ack = await client.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": client_id, "body": client_id},
                timeout=3.0,
            )
        except Exception:  # disconnected or no answer: the outcome is unknown
            outcomes.lost.append(client_id)
            await asyncio.sleep(0.05)  # pace retries against a down hub, not an event wait
            continue
        if ack.get("ok"):
            outcomes.acked[client_id] = ack["message"]["seq"]
            if on_ack is not None:
                on_ack()
        else:
            assert ack["error"]["code"] == "unavailable", ack
            outcomes.unavailable.append(client_id)


async def resend(
    client: Client, conversation_id: str, client_ids: list[str], outcomes: Outcomes
) -> None:
    """What a device does after reconnecting: send its unanswered messages again, with
    the same client_ids."""
    for client_id in client_ids:
        ack = await client.call(
            "message:send",
            {"conversation_id": conversation_id, "client_id": client_id, "body": client_id},
        )
        assert ack["ok"], ack
        outcomes.acked[client_id] = ack["message"]["seq"]


async def all_messages(client: Client, conversation_id: str) -> list[dict[str, Any]]:
    """The whole conversation, through `sync` from the start."""
    messages: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = await client.call("sync", {"cursors": {conversation_id: cursor}, "limit": 500})
        assert page["ok"], page
        messages += page["messages"]
        if not page["has_more"] or not page["messages"]:
            return messages
        cursor = page["messages"][-1]["seq"]


def check_conversation(messages: list[dict[str, Any]], acked: dict[str, int]) -> None:
    """No acked message lost, none twice, seq gap-free, and each acked seq its own."""
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(1, len(seqs) + 1)), "seq has gaps or repeats"
    client_ids = [m["client_id"] for m in messages]
    assert len(client_ids) == len(set(client_ids)), "a client_id is stored twice"
    stored = {m["client_id"]: m["seq"] for m in messages}
    missing = [c for c in acked if c not in stored]
    assert missing == [], f"{len(missing)} acked messages lost"
    assert all(stored[c] == seq for c, seq in acked.items()), "an ack named another seq"


@dataclass
class Load:
    """Several devices of one user sending into one conversation, each its own
    messages one after another, until :meth:`finish`."""

    senders: list[Client]
    conversation_id: str
    outcomes: list[Outcomes]
    stop: asyncio.Event
    loops: list[asyncio.Future[None]]

    @classmethod
    async def start(
        cls,
        settings: Settings,
        url: str,
        first: Client,
        conversation_id: str,
        devices: int,
        clients: list[Client],
    ) -> Load:
        """``first`` and ``devices - 1`` more devices of its user, all sending."""
        more = [await connect(settings, url, first.user_id, first.role) for _ in range(devices - 1)]
        clients += more
        senders = [first, *more]
        outcomes = [Outcomes() for _ in senders]
        stop = asyncio.Event()
        loops = [
            asyncio.ensure_future(send_loop(sender, conversation_id, f"d{i}", outcome, stop))
            for i, (sender, outcome) in enumerate(zip(senders, outcomes, strict=True))
        ]
        return cls(senders, conversation_id, outcomes, stop, loops)

    def acked_count(self) -> int:
        return sum(len(outcome.acked) for outcome in self.outcomes)

    async def finish(self) -> None:
        """Stop sending, then resend what got no ack, as each device would."""
        self.stop.set()
        await asyncio.gather(*self.loops)
        for sender, outcome in zip(self.senders, self.outcomes, strict=True):
            await resend(sender, self.conversation_id, outcome.lost + outcome.unavailable, outcome)

    def acked(self) -> dict[str, int]:
        return {c: seq for outcome in self.outcomes for c, seq in outcome.acked.items()}
