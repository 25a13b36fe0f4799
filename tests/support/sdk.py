"""The client SDK (clients/js) driven from the tests: a Node process running HubClient
instances (clients/js/test/agent.mjs), one JSON command and answer per line."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

from tests.support.hubs import ROOT

AGENT = ROOT / "clients" / "js" / "test" / "agent.mjs"
BUILT = ROOT / "clients" / "js" / "dist" / "index.js"


class AgentError(AssertionError):
    pass


class Agent:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            answer = json.loads(line)
            future = self._waiting.pop(answer["id"], None)
            if future is None or future.done():
                continue
            if answer["ok"]:
                future.set_result(answer["result"])
            else:
                future.set_exception(AgentError(answer["error"]))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AgentError("the Node agent exited"))

    async def __call__(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        assert self.process.stdin is not None
        command_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        self.process.stdin.write(json.dumps({"id": command_id, "op": op, "args": args}).encode())
        self.process.stdin.write(b"\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._reader


@contextlib.asynccontextmanager
async def sdk_agent() -> AsyncIterator[Agent]:
    node = shutil.which("node")
    assert node, "Node.js 20+ is required (./dev setup installs it)"
    assert BUILT.exists(), "the SDK is not built: ./dev setup builds it"
    process = await asyncio.create_subprocess_exec(
        node,
        str(AGENT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    agent = Agent(process)
    try:
        yield agent
    finally:
        await agent.close()
