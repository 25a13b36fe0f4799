"""Hubs and clients of the tests: a hub on loopback, an official Socket.IO client, waits."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from hub.core import jsonwire, schema
from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.server.app import create_app
from hub.server.appkeys import CONTROL, LISTENERS, ROUTER, SERVICES

ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TIMEOUT = 5.0


# What the hub sent that its schema (hub.core.schema) does not describe; an autouse
# fixture fails the test that received it.
SCHEMA_BREAKS: list[str] = []


class Recorder:
    """Collects the events a client receives; tests wait on them with a timeout."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()

    async def record(self, event: str, data: Any) -> None:
        async with self._changed:
            self.events.append((event, data))
            self._changed.notify_all()

    def of(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait_for(
        self,
        event: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = TIMEOUT,
    ) -> Any:
        async def match() -> Any:
            async with self._changed:
                while True:
                    for name, data in self.events:
                        if name == event and predicate(data):
                            return data
                    await self._changed.wait()

        return await asyncio.wait_for(match(), timeout)


class Client:
    """A python-socketio AsyncClient with a recorder and ``call`` that always times out."""

    def __init__(self, user_id: str, role: str, token: str, *, reconnection: bool = False) -> None:
        self.user_id = user_id
        self.role = role
        self.token = token
        self.recorder = Recorder()
        self.sio = socketio.AsyncClient(
            reconnection=reconnection,
            reconnection_delay=0.2,
            reconnection_delay_max=1,
            json=jsonwire,
        )
        self.connect_error: Any = None
        self.disconnected = asyncio.Event()

        @self.sio.on("connect")
        async def on_connect() -> None:
            await self.recorder.record("connect", None)

        @self.sio.on("disconnect")
        async def on_disconnect(*reason: Any) -> None:
            self.disconnected.set()

        @self.sio.on("*")
        async def any_event(event: str, *args: Any) -> None:
            data = args[0] if args else None
            try:
                schema.check_event(event, data)
            except ValueError as exc:
                SCHEMA_BREAKS.append(str(exc))
            await self.recorder.record(event, data)

        @self.sio.on("connect_error")
        async def on_connect_error(data: Any) -> None:
            self.connect_error = data

    async def close(self) -> None:
        """Disconnect, or stop reconnecting, and close the client's HTTP session.

        A reconnection attempt that failed (its server was down) leaves engineio's
        session open while the client is not connected; collected later, during
        another test, it failed that test with an unclosed-session warning.
        """
        self.sio.reconnection = False
        await self.sio.shutdown()
        http = self.sio.eio.http
        if http is not None and not http.closed:
            await http.close()

    async def call(self, event: str, data: Any = None, timeout: float = TIMEOUT) -> Any:
        ack = await self.sio.call(event, data, timeout=timeout)
        schema.check_ack(event, ack)
        return ack

    async def wait_for(
        self,
        event: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = TIMEOUT,
    ) -> Any:
        return await self.recorder.wait_for(event, predicate, timeout)


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait for ``condition`` to hold, checking every 10 ms, at most ``timeout`` s."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def cancel_stops(task: asyncio.Task[Any], timeout: float = TIMEOUT) -> None:
    """Cancel ``task`` and assert it ended cancelled within ``timeout`` seconds."""
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    try:
        assert task.cancelled()
    finally:
        task.cancel()  # a second cancel, which a loop that lost the first one takes


@contextmanager
def tasks_started() -> Iterator[list[str]]:
    """The qualified names of the coroutines of every task this loop starts meanwhile."""
    loop = asyncio.get_running_loop()
    started: list[str] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        started.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield started
    finally:
        loop.set_task_factory(None)


async def wait_ready(app: web.Application, timeout: float = TIMEOUT) -> None:
    """Wait until the hub's listeners run and its fan-out and control channel are
    subscribed (they start in the background)."""
    listeners, manager = app[LISTENERS], app[SERVICES].sio.manager
    control = app[CONTROL].listener
    await until(
        lambda: (
            listeners.stream.alive()
            and listeners.channel.alive()
            and manager.listening()
            and control.alive()
        ),
        timeout,
    )


class HubFixture:
    """A running hub (or several sharing MongoDB and Redis) and a way to connect users to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channel = f"hub:socketio:{uuid.uuid4().hex[:8]}"
        self.servers: list[TestServer] = []
        self.clients: list[Client] = []
        self.prefix = uuid.uuid4().hex[:6]

    async def start(self, settings: Settings | None = None) -> TestServer:
        app = create_app(settings or self.settings, socketio_channel=self.channel)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        self.servers.append(server)
        await wait_ready(app)
        return server

    async def stop(self, server: TestServer) -> None:
        for client in self.clients:
            if client.sio.connected and client.sio.eio.base_url.startswith(
                str(server.make_url("/"))
            ):
                await client.sio.disconnect()
        await server.app[ROUTER].wait_until_empty(TIMEOUT)
        await server.close()
        self.servers.remove(server)

    def app(self, index: int = 0) -> web.Application:
        return self.servers[index].app

    def user(self, name: str) -> str:
        """A user id unique to this test, so presence in the shared Redis never collides."""
        return f"{name}-{self.prefix}"

    def token(self, user_id: str, role: str, ttl: int = 600) -> str:
        return issue_token(self.settings, user_id, role, ttl)

    async def connect(
        self,
        user_id: str,
        role: str = "patient",
        *,
        server: int = 0,
        token: str | None = None,
        transports: list[str] | None = None,
    ) -> Client:
        client = Client(user_id, role, token or self.token(user_id, role))
        self.clients.append(client)
        await client.sio.connect(
            str(self.servers[server].make_url("/")),
            auth={"token": client.token},
            transports=transports or ["websocket"],
            wait_timeout=TIMEOUT,
        )
        return client

    async def close(self) -> None:
        """Close the clients, then the hubs; harmless when called again."""
        clients, self.clients = self.clients, []
        for client in clients:
            await client.close()
        servers, self.servers = self.servers, []
        for server in servers:
            await server.app[ROUTER].wait_until_empty(TIMEOUT)
        for server in servers:
            await server.close()


def with_env(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


async def start_hub_process(
    env: dict[str, str], command: str = "serve", timeout: float = 90
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m hub <command>`` as a real process; returns it once it logs that it
    listens, with its log so far."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        command,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []

    async def read_until_listening() -> None:
        assert process.stderr is not None
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "hub exited early:\n" + "".join(lines)
            lines.append(line)
            if "hub listening" in line:
                return

    await asyncio.wait_for(read_until_listening(), timeout)
    return process, "".join(lines)


MakeHub = Callable[..., Awaitable[HubFixture]]
"""The ``make_hub`` fixture: ``await make_hub(settings=None, *, start=True)``."""
