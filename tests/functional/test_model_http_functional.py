"""The aiohttp transport under the ollama client's httpx, against a real HTTP server."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from hub.assistant.transport import AiohttpTransport
from hub.server import embedded
from tests.support.hubs import TIMEOUT


class Server:
    """Streams lines on ``/stream`` when told to; ``/drop`` cuts the connection midway."""

    def __init__(self) -> None:
        self.next_line: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.bodies: list[bytes] = []

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            while (line := await self.next_line.get()) is not None:
                await response.write(line)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def drop(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"n": 1}\n')
        assert request.transport is not None
        request.transport.close()
        return response


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_post("/stream", state.stream)
    app.router.add_get("/drop", state.drop)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = embedded.free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client(base_url: str, read: float = TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        transport=AiohttpTransport(),
        timeout=httpx.Timeout(read, connect=TIMEOUT),
    )


async def test_lines_arrive_as_the_server_writes_them(server: tuple[Server, str]):
    state, url = server
    async with client(url) as http, http.stream("POST", "/stream", json={"q": 1}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.aiter_lines()
        for n in range(3):  # each line is read before the next one is even written
            await state.next_line.put(f'{{"n": {n}}}\n'.encode())
            async with asyncio.timeout(TIMEOUT):
                assert await anext(lines) == f'{{"n": {n}}}'
        await state.next_line.put(None)
        assert [line async for line in lines] == []
    assert state.bodies == [b'{"q":1}']


async def test_closing_a_stream_midway_disconnects_the_server(server: tuple[Server, str]):
    """Closing the stream is how a superseded answer stops the model generating."""
    state, url = server
    async with client(url) as http:
        async with http.stream("POST", "/stream", json={}) as response:
            await state.next_line.put(b"first\n")
            assert await anext(response.aiter_lines()) == "first"
        async with asyncio.timeout(TIMEOUT):
            await state.disconnected.wait()


async def test_a_closed_response_is_freed_without_the_garbage_collector(
    server: tuple[Server, str],
):
    """Regression: httpx's stream points back at its response, a cycle that kept every
    model request's response, headers and aiohttp objects until a collection. At 50
    answers streaming, the hub's young collections took up to 40 ms to free them."""
    state, url = server
    gc.disable()
    try:
        async with client(url) as http:
            async with http.stream("POST", "/stream", json={}) as response:
                await state.next_line.put(b"first\n")
                await state.next_line.put(None)
                assert [line async for line in response.aiter_lines()] == ["first"]
            freed = weakref.ref(response)
            del response
            assert freed() is None
    finally:
        gc.enable()


async def test_failures_come_back_as_httpx_errors(server: tuple[Server, str]):
    _, url = server
    async with client(url) as http:
        with pytest.raises(httpx.ReadError):  # the connection lost midway
            async with http.stream("GET", "/drop") as response:
                async for _ in response.aiter_lines():
                    pass
    async with client(url, read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):  # nothing written within the read timeout
            async with http.stream("POST", "/stream", json={}) as response:
                async for _ in response.aiter_lines():
                    pass
    async with client(f"http://127.0.0.1:{embedded.free_port()}") as http:
        with pytest.raises(httpx.ConnectError):  # nobody listens
            await http.get("/")
