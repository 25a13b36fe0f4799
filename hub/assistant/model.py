"""One streamed chat with the Ollama server, token batches out, errors as the hub's own.

``OllamaStream`` is what the assistant talks to: the ``ollama`` client in the hub's
event loop. The contract of ``open(messages, interval)``:

- it returns without waiting for the model server, or raises ``AssistantFailed``:
  the request goes out at the first read, in the reader's own task. Work of the
  caller's own while the model thinks runs beside the read (a task), which it may
  cancel to stop the stream.
- the ``Chunks`` it returns yield ``Chunk``s in the model's order. The first piece
  of text goes out as soon as it is parsed, carrying ``model_wait_ms``: the time from
  sending the request to that token, which is the model server's share of the wait.
  Later pieces are batched, at most one chunk per ``interval`` seconds, and nothing
  is dropped.
- the last chunk has ``final`` set: the model's counters and timings (it may carry
  text too).
- every wait on the server is bounded by the settings' timeout; a failure is raised
  as ``AssistantFailed`` with the code ``unavailable``, ``timeout`` or
  ``model_not_found``.
- closing the ``Chunks`` early, even before reading any (the consumer was cancelled,
  or no longer wants the answer), closes the HTTP stream, so the server stops
  generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import ollama

from hub.assistant.transport import AiohttpTransport
from hub.core.errors import AssistantFailed
from hub.core.settings import AssistantSettings


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    model_wait_ms: float | None = None  # on the first chunk with text only
    final: dict[str, Any] | None = None  # on the last chunk only


class Chunks(Protocol):
    """One answer's chunks; ``aclose()`` (``contextlib.aclosing``) when done with it."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def __anext__(self) -> Chunk: ...

    async def aclose(self) -> None: ...


class OllamaStream:
    """The ``ollama`` client in this event loop."""

    def __init__(
        self, settings: AssistantSettings, client: ollama.AsyncClient | None = None
    ) -> None:
        self._settings = settings
        self._client = client or ollama.AsyncClient(
            host=settings.ollama_host,
            timeout=httpx.Timeout(settings.timeout, connect=min(5.0, settings.timeout)),
            transport=AiohttpTransport(),
        )

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def open(self, messages: list[dict[str, str]], interval: float) -> Chunks:
        """``stream``: the request goes out at the first read. A task of its own to
        read the first chunk cost two trips round the event loop on the way to it."""
        return self.stream(messages, interval)

    async def stream(
        self, messages: list[dict[str, str]], interval: float
    ) -> AsyncGenerator[Chunk, None]:
        """The chunks of one answer (the module's contract); the request goes out at
        the first read."""
        requested = time.monotonic()
        pending: list[str] = []
        model_wait_ms: float | None = None
        last_sent = 0.0
        final: dict[str, Any] = {}
        async for response in self._chat(messages):
            piece = response.message.content or "" if response.message else ""
            if piece:
                pending.append(piece)
                if model_wait_ms is None:
                    model_wait_ms = elapsed_ms(requested)
                    last_sent = time.monotonic()
                    yield Chunk("".join(pending), model_wait_ms=model_wait_ms)
                    pending.clear()
                elif time.monotonic() - last_sent >= interval:
                    last_sent = time.monotonic()
                    yield Chunk("".join(pending))
                    pending.clear()
            if response.done:
                final = {
                    "prompt_eval_count": response.prompt_eval_count,
                    "eval_count": response.eval_count,
                    "model_total_ms": _ns_ms(response.total_duration),
                    "model_load_ms": _ns_ms(response.load_duration),
                    "model_prompt_eval_ms": _ns_ms(response.prompt_eval_duration),
                    "model_eval_ms": _ns_ms(response.eval_duration),
                }
        yield Chunk("".join(pending), final=final)

    async def _chat(self, messages: list[dict[str, str]]) -> AsyncIterator[Any]:
        """Ollama's stream, each wait bounded by the timeout; errors as AssistantFailed.

        The client's own timeouts bound the waits: connecting, and each read of the
        answer (httpx's read timeout, aiohttp's ``sock_read`` under it), so a model
        server that stops sending fails the stream with ``timeout``. A timeout of
        this loop's own around each token cost about 2% of the hub's CPU at 1,500
        tokens a second, for the same bound."""
        try:
            stream = await asyncio.wait_for(
                self._client.chat(
                    model=self._settings.model,
                    messages=messages,
                    stream=True,
                    options={
                        "num_ctx": self._settings.num_ctx,
                        "num_predict": self._settings.num_predict,
                    },
                ),
                self._settings.timeout,
            )
            iterator = cast(AsyncGenerator[Any, None], stream)
            try:
                async for response in iterator:
                    yield response
            finally:
                await iterator.aclose()  # closes the HTTP stream: Ollama stops generating
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise AssistantFailed(
                    "model_not_found", f"model {self._settings.model} is not on the Ollama server"
                ) from exc
            raise AssistantFailed("unavailable", "the model server refused") from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise AssistantFailed("timeout", "the model server is too slow") from exc
        except (httpx.HTTPError, ConnectionError, OSError) as exc:
            raise AssistantFailed("unavailable", "the model server is unreachable") from exc


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.monotonic()``), to 0.01."""
    return round((time.monotonic() - started) * 1000, 2)


def _ns_ms(value: int | None) -> float | None:
    return round(value / 1e6, 2) if value else None
