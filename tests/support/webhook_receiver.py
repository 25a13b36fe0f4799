"""A back-end's webhook endpoint: checks each delivery's signature with the Standard
Webhooks reference library, fails the first ``fail_first`` tries of each message,
and keeps what it accepted."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.secret: str | None = None
        self.fail_first = fail_first
        self.failing = False  # every try fails while set
        self.tries: dict[str, int] = {}
        self.accepted: list[dict[str, Any]] = []
        self.refused_signatures = 0
        self.signatures: list[str] = []  # each try's webhook-signature header
        self.arrived = asyncio.Event()
        self.server: TestServer | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hooks"))

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        async def enough() -> None:
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.accepted

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.signatures.append(request.headers.get("webhook-signature", ""))
        assert self.secret is not None
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.refused_signatures += 1
            return web.Response(status=400)
        message_id = request.headers["webhook-id"]
        self.tries[message_id] = self.tries.get(message_id, 0) + 1
        if self.failing or self.tries[message_id] <= self.fail_first:
            return web.Response(status=503)
        self.accepted.append({"id": message_id, **payload})
        self.arrived.set()
        return web.Response(status=204)
