"""A local HTTP server that behaves like Ollama's API, for the real ``ollama`` client.

``POST /api/chat`` streams NDJSON: one object per chunk with ``message.content``,
then a final object with ``done: true`` and the timing fields (nanoseconds);
``GET /api/tags`` lists the models; an unknown model gets a 404
``{"error": "model '...' not found"}``. A test can slow it down (before the first
chunk, between chunks), and read what it was sent and how many streams ran at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

MODEL = "llama3.2"


@dataclass
class FakeOllama:
    models: set[str] = field(default_factory=lambda: {MODEL})
    chunks: list[str] = field(default_factory=lambda: ["Ask ", "about ", "fever."])
    first_delay: float = 0.0  # seconds before the first chunk (the model's TTFT)
    chunk_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    closed_early: int = 0  # streams the client closed before the end
    closed_thinking: int = 0  # of which, before their first token
    server: TestServer | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/tags", self._tags)
        self.add_routes(app)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    def add_routes(self, app: web.Application) -> None:
        """Room for a subclass's own routes (the benchmark's)."""

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    {
                        "name": f"{name}:latest",
                        "model": f"{name}:latest",
                        "size": 2019393189,
                        "digest": "a80c4f17acd5",
                        "modified_at": datetime.now(UTC).isoformat(),
                        "details": {"family": "llama", "parameter_size": "3.2B"},
                    }
                    for name in sorted(self.models)
                ]
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        model = str(body.get("model", "")).removesuffix(":latest")
        if model not in self.models:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        started = time.monotonic_ns()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        finished = answered = False
        try:
            await asyncio.sleep(self.first_delay)  # the model "thinking"
            first = time.monotonic_ns()
            for i, piece in enumerate(self.chunks):
                if i:
                    await asyncio.sleep(self.chunk_delay)
                await response.write(self._line(model, piece, done=False))
                answered = True
            total = time.monotonic_ns() - started
            await response.write(
                self._line(
                    model,
                    "",
                    done=True,
                    extra={
                        "done_reason": "stop",
                        "total_duration": total,
                        "load_duration": 1000,
                        "prompt_eval_count": 42,
                        "prompt_eval_duration": first - started,
                        "eval_count": len(self.chunks),
                        "eval_duration": total - (first - started),
                    },
                )
            )
            await response.write_eof()
            finished = True
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        finally:
            self.in_flight -= 1
            if not finished:
                self.closed_early += 1
                self.closed_thinking += not answered
        return response

    @staticmethod
    def _line(
        model: str, content: str, *, done: bool, extra: dict[str, Any] | None = None
    ) -> bytes:
        obj = {
            "model": model,
            "created_at": datetime.now(UTC).isoformat(),
            "message": {"role": "assistant", "content": content},
            "done": done,
            **(extra or {}),
        }
        return (json.dumps(obj) + "\n").encode()
