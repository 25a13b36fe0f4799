"""A local HTTP server that behaves like Twilio's Messages API, for the real client.

It speaks what Twilio documents: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
with a form body and HTTP basic auth, answering ``201`` and the message resource as
JSON; ``GET`` of the same path lists messages (filtered by ``To``); failures use
Twilio's error body ``{code, message, more_info, status}``. It runs on its own thread
and event loop so a worker process can reach it while tests wait on it.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from hub.server.embedded import free_port


@dataclass
class Planned:
    """What the next request to create a message gets."""

    status: int = 201
    code: int | None = None
    delay: float = 0.0


@dataclass
class FakeTwilio:
    account_sid: str = "AC" + "0" * 32
    auth_token: str = "fake-twilio-token-" + uuid.uuid4().hex
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    plan: list[Planned] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.received = threading.Event()  # set when a message is accepted, before answering

    # -- control, from the test's thread ---------------------------------------------

    def start(self) -> FakeTwilio:
        self._thread.start()
        port = free_port()
        asyncio.run_coroutine_threadsafe(self._serve(port), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:  # answers still held back by a planned delay
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def then(self, *planned: Planned) -> None:
        with self._changed:
            self.plan.extend(planned)

    def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Block until ``count`` messages were accepted; AssertionError on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} SMS accepted, expected {count}")
            return list(self.messages)

    def to(self, phone: str) -> list[dict[str, Any]]:
        with self._changed:
            return [m for m in self.messages if m["to"] == phone]

    # -- the API ----------------------------------------------------------------------

    async def _serve(self, port: int) -> None:
        app = web.Application()
        path = "/2010-04-01/Accounts/{account}/Messages.json"
        app.router.add_post(path, self._create)
        app.router.add_get(path, self._list)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (
            request.match_info["account"] == self.account_sid
            and request.headers.get("Authorization") == f"Basic {expected}"
        )

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        with self._changed:
            self.requests += 1
            planned = self.plan.pop(0) if self.plan else Planned()
        if planned.status >= 400:
            return _error(planned.status, planned.code or planned.status, "planned failure")
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        if not to or not body or not (form.get("From") or form.get("MessagingServiceSid")):
            return _error(400, 21604, "A 'To', 'Body' and 'From' or service are required")
        now = datetime.now(UTC)
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": self.account_sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": format_datetime(now),
            "date_sent": format_datetime(now),
            "date_updated": format_datetime(now),
            "status_callback": form.get("StatusCallback"),
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/x.json",
        }
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        self.received.set()
        if planned.delay:
            # Accepted, but the answer is slow: a worker that dies now never hears it.
            await asyncio.sleep(planned.delay)
        return web.json_response(message, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        to = request.query.get("To")
        with self._changed:
            found = [m for m in self.messages if to is None or m["to"] == to]
        return web.json_response(
            {
                "messages": found,
                "page": 0,
                "page_size": 50,
                "first_page_uri": "",
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": request.path,
                "start": 0,
                "end": len(found),
            }
        )


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )
