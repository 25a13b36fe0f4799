"""A raw Engine.IO/Socket.IO client over aiohttp's WebSocket: it sends exactly the
frames a test writes (which the official clients never would) and reads what comes
back, answering the server's pings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from hub.core.protocol import SOCKETIO_PATH

TIMEOUT = 5.0


class RawSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def receive(self, timeout: float = TIMEOUT) -> str | None:
        """The next text frame other than a ping (answered); None once the socket closed
        or the server sent Engine.IO's CLOSE packet."""
        while True:
            message = await self.ws.receive(timeout)
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return None
            if message.data == "2":
                await self.ws.send_str("3")
                continue
            if message.data == "1":
                return None
            return str(message.data)

    async def ack(self, ack_id: int, timeout: float = TIMEOUT) -> Any:
        """The payload of the ack with ``ack_id``, skipping pushed events."""
        prefix = f"43{ack_id}["
        while True:
            frame = await self.receive(timeout)
            assert frame is not None, f"socket closed before ack {ack_id}"
            if frame.startswith(prefix):
                return orjson.loads(frame[len(prefix) - 1 :])[0]

    async def call(self, event: str, payload: Any = None) -> Any:
        """An event sent the way the official clients encode it, and its ack."""
        self._next_id += 1
        args = [event] if payload is None else [event, payload]
        await self.send(f"42{self._next_id}" + orjson.dumps(args).decode())
        return await self.ack(self._next_id)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id


@asynccontextmanager
async def raw_socket(base_url: str, token: str) -> AsyncIterator[RawSocket]:
    """A Socket.IO connection on the WebSocket transport, authenticated with ``token``."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        url = f"{base_url.rstrip('/')}/{SOCKETIO_PATH}/?EIO=4&transport=websocket"
        async with session.ws_connect(url, autoping=True) as ws:
            sock = RawSocket(ws)
            opened = await sock.receive()
            assert opened is not None and opened.startswith("0{"), opened
            await sock.send("40" + orjson.dumps({"token": token}).decode())
            connected = await sock.receive()
            assert connected is not None and connected.startswith("40{"), connected
            yield sock


async def closed(sock: RawSocket, timeout: float = TIMEOUT) -> bool:
    """Whether the server ends the connection within ``timeout`` seconds."""

    async def drain() -> None:
        while await sock.receive(timeout) is not None:
            pass

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        return False
    return True
