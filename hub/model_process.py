"""The model's streams in a child process (``HUB_ASSISTANT_PROCESS=1``), off the hub's loop.

Reading Ollama's NDJSON costs the ``ollama`` client tens of microseconds a token
(pydantic and json, over the aiohttp transport). ``ModelProcess`` runs
``OllamaStream`` in ``python -m hub.model_process`` instead and hands the hub only
the batches it emits (one per ``HUB_ASSISTANT_STREAM_INTERVAL`` a stream). The pipe
costs the hub about as much as the parsing it saves, so this only pays when the child
has a core the hub does not use (docs/assistant.md).

The pipe between the two carries one JSON object a line:

- hub to child: ``{"op": "chat", "id", "messages", "interval"}`` and
  ``{"op": "cancel", "id"}`` (closes that stream: the server stops generating);
- child to hub: ``{"id", "chunk": {...}}`` (``Chunk.to_wire``; the one with ``final``
  ends the stream) or ``{"id", "error": code, "message"}``.

If the child dies, every open stream fails with ``unavailable`` and the next request
starts a new child. The child reads nothing but its command line: the assistant
settings as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from hub import logs, runtime
from hub.errors import AssistantFailed
from hub.metrics import Metrics
from hub.model_stream import Chunk, Chunks, OllamaStream
from hub.settings import AssistantSettings

log = logging.getLogger("hub.model_process")

LINE_LIMIT = 16 * 1024 * 1024  # a prompt is at most num_ctx tokens; far below this
RESTART_BACKOFF = 1.0  # seconds between two starts of a child that keeps dying
START_TIMEOUT = 10.0  # seconds for the child to say it is ready


class ModelProcess:
    """``ModelStream`` backed by a child process (see the module docstring)."""

    def __init__(
        self,
        settings: AssistantSettings,
        log_level: str = "WARNING",
        log_format: str = "text",
        restart_backoff: float = RESTART_BACKOFF,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._restart_backoff = restart_backoff
        self._logging = {"level": log_level, "format": log_format}
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._last_start = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child now rather than on the first request."""
        try:
            await self._ensure_started()
        except AssistantFailed:
            log.warning("the model process did not start; the next request tries again")

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # the child exits at end of input
            try:
                async with asyncio.timeout(2.0):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail_open_streams()

    async def open(self, messages: list[dict[str, str]], interval: float) -> Chunks:
        """Hand the request to the child (``ModelStream``'s contract); its chunks."""
        process = await self._ensure_started()
        stream_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._streams[stream_id] = queue
        self._send(
            process, {"op": "chat", "id": stream_id, "messages": messages, "interval": interval}
        )
        if process.returncode is not None:  # died before this stream was registered
            self._streams.pop(stream_id, None)
            raise AssistantFailed("unavailable", "the model process stopped")

        def end(cancel: bool) -> None:
            self._streams.pop(stream_id, None)
            if cancel and process.returncode is None:
                self._send(process, {"op": "cancel", "id": stream_id})

        # The child bounds every wait on the server; this only catches a child that hangs.
        return _ChildChunks(queue, end, patience=self._settings.timeout + 5.0)

    # -- the child's lifecycle ------------------------------------------------------------

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return self._process
            if time.monotonic() - self._last_start < self._restart_backoff:
                raise AssistantFailed("unavailable", "the model process is restarting")
            self._last_start = time.monotonic()
            self._process = await self._spawn()
            return self._process

    async def _spawn(self) -> asyncio.subprocess.Process:
        config = json.dumps(
            {"assistant": dataclasses.asdict(self._settings), "logging": self._logging}
        )
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hub.model_process",
                config,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise AssistantFailed("unavailable", "the model process did not start") from exc
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ready = await process.stdout.readline()
        except TimeoutError:
            ready = b""
        except asyncio.CancelledError:  # the hub is closing while the child starts
            process.kill()
            raise
        if ready.strip() != b'{"ready":true}':
            process.kill()
            await process.wait()
            raise AssistantFailed("unavailable", "the model process did not start")
        self._reader = asyncio.create_task(self._read(process), name="model-process-reader")
        log.info("model process %s started", process.pid)
        return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                message = orjson.loads(line)
                queue = self._streams.get(message["id"])
                if queue is not None:  # else: a stream closed on this side already
                    queue.put_nowait(message)
        except (ValueError, KeyError, asyncio.LimitOverrunError) as exc:
            log.error("model process sent a bad line (%s); restarting it", type(exc).__name__)
            process.kill()
        finally:
            code = await process.wait()
            if self._process is process:
                log.error("model process %s exited with %s", process.pid, code)
                self._metrics.model_process_exits.inc()
                self._process = None
            self._fail_open_streams()

    def _fail_open_streams(self) -> None:
        for queue in self._streams.values():
            queue.put_nowait({"error": "unavailable", "message": "the model process stopped"})

    def _send(self, process: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(orjson.dumps(message) + b"\n")
        except (ConnectionError, RuntimeError):
            pass  # the child is gone: the reader fails the open streams


class _ChildChunks:
    """One stream's chunks as the child sends them; closing it early cancels the
    stream in the child."""

    def __init__(
        self, queue: asyncio.Queue[dict[str, Any]], end: Callable[[bool], None], patience: float
    ) -> None:
        self._queue = queue
        self._end = end  # forgets the stream; with True, also stops it in a live child
        self._patience = patience
        self._ended = False

    def __aiter__(self) -> _ChildChunks:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(self._patience):
                message = await self._queue.get()
        except TimeoutError:
            await self.aclose()
            raise AssistantFailed("timeout", "the model process is too slow") from None
        if "error" in message:  # the child has ended it already
            self._ended = True
            self._end(False)
            raise AssistantFailed(message["error"], message.get("message", ""))
        chunk = Chunk.from_wire(message["chunk"])
        if chunk.final is not None:
            self._ended = True
            self._end(False)
        return chunk

    async def aclose(self) -> None:
        if not self._ended:
            self._ended = True
            self._end(True)


# -- the child ----------------------------------------------------------------------------


async def _serve(settings: AssistantSettings) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    model = OllamaStream(settings)
    running: dict[int, asyncio.Task[None]] = {}
    # A collector pause here holds every stream's tokens, the first ones included.
    runtime.tune_gc()

    def send(message: dict[str, Any]) -> None:
        writer.write(orjson.dumps(message) + b"\n")

    async def run(stream_id: int, messages: list[dict[str, str]], interval: float) -> None:
        try:
            async for chunk in model.stream(messages, interval):
                send({"id": stream_id, "chunk": chunk.to_wire()})
                await writer.drain()
        except AssistantFailed as exc:
            send({"id": stream_id, "error": exc.code, "message": exc.message})
        except Exception as exc:  # one stream's bug must not end the others
            log.exception("model stream failed: %s", type(exc).__name__)
            send({"id": stream_id, "error": "unavailable", "message": "the assistant failed"})
        finally:
            running.pop(stream_id, None)

    send({"ready": True})
    while line := await reader.readline():
        request = orjson.loads(line)
        if request["op"] == "chat":
            running[request["id"]] = asyncio.create_task(
                run(request["id"], request["messages"], request["interval"])
            )
        elif request["op"] == "cancel" and request["id"] in running:
            running[request["id"]].cancel()
    for task in running.values():  # end of input: the hub is gone or closing
        task.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)
    await model.close()


def main(argv: list[str]) -> None:
    config = json.loads(argv[0])
    logs.configure(config["logging"]["level"], config["logging"]["format"], stream=sys.stderr)
    settings = AssistantSettings(**config["assistant"])
    runtime.backport_wait_for()
    try:
        import uvloop

        uvloop.run(_serve(settings))
    except ImportError:
        asyncio.run(_serve(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
