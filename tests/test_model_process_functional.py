"""The model's streams in a child process: the same contract as in the hub's loop, and
a child that dies costs its open streams an ``unavailable``, not the hub."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from hub.errors import AssistantFailed
from hub.metrics import Metrics
from hub.model_process import ModelProcess
from hub.model_stream import Chunk, ModelStream, OllamaStream
from hub.settings import AssistantSettings
from tests.fake_ollama import MODEL, FakeOllama

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "?"}]


def assistant_settings(fake: FakeOllama, **changes: object) -> AssistantSettings:
    assert fake.server is not None
    host = str(fake.server.make_url("")).rstrip("/")
    return AssistantSettings(ollama_host=host, model=MODEL, timeout=2.0, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=["process", "loop"])
async def model(
    request: pytest.FixtureRequest, ollama_server: FakeOllama
) -> AsyncIterator[ModelStream]:
    settings = assistant_settings(ollama_server)
    stream: ModelStream = (
        ModelProcess(settings, restart_backoff=0.0)
        if request.param == "process"
        else OllamaStream(settings)
    )
    yield stream
    await stream.close()


async def collect(model: ModelStream, interval: float = 0.0) -> list[Chunk]:
    async with aclosing(await model.open(MESSAGES, interval)) as chunks:
        return [chunk async for chunk in chunks]


async def test_first_token_at_once_then_batches_then_the_model_timings(
    model: ModelStream, ollama_server: FakeOllama
):
    ollama_server.chunks = [f"t{n} " for n in range(30)]
    ollama_server.chunk_delay = 0.01
    chunks = await collect(model, interval=0.1)
    assert chunks[0].text == "t0 " and chunks[0].model_wait_ms is not None
    assert "".join(c.text for c in chunks) == "".join(ollama_server.chunks)  # nothing lost
    assert 2 < len(chunks) < 15  # ~0.3 s of tokens in batches of 0.1 s, not 30 chunks
    assert all(c.model_wait_ms is None for c in chunks[1:])
    final = chunks[-1].final
    assert final is not None and final["eval_count"] == 30 and final["prompt_eval_count"] == 42
    assert all(c.final is None for c in chunks[:-1])
    assert ollama_server.requests[0]["messages"] == MESSAGES


async def test_failures_keep_their_codes(model: ModelStream, ollama_server: FakeOllama):
    ollama_server.models = set()
    with pytest.raises(AssistantFailed) as missing:
        await collect(model)
    assert missing.value.code == "model_not_found"
    ollama_server.models = {MODEL}
    ollama_server.first_delay = 3.0  # over the 2 s timeout
    with pytest.raises(AssistantFailed) as slow:
        await collect(model)
    assert slow.value.code == "timeout"
    ollama_server.first_delay, ollama_server.chunk_delay = 0.0, 3.0  # stalls midway
    with pytest.raises(AssistantFailed) as stalled:
        await collect(model)
    assert stalled.value.code == "timeout"


async def test_closing_a_stream_early_stops_the_server_generating(
    model: ModelStream, ollama_server: FakeOllama
):
    ollama_server.chunk_delay = 5.0
    async with aclosing(await model.open(MESSAGES, 0.0)) as chunks:
        first = await anext(chunks)
        assert first.text == "Ask "
    async with asyncio.timeout(5):
        while ollama_server.closed_early == 0:  # the server sees the disconnect
            await asyncio.sleep(0.01)
    ollama_server.chunk_delay = 0.0
    assert "".join(c.text for c in await collect(model)) == "Ask about fever."


async def test_cancelling_the_reader_while_the_model_thinks_stops_the_server(
    model: ModelStream, ollama_server: FakeOllama
):
    """What lets an ask check its copy of the consultation while the model thinks: the
    check, beside the task reading the stream, cancels that task when the copy is
    stale, and the server stops thinking on the request."""
    ollama_server.first_delay = 5.0
    sent = len(ollama_server.requests)

    async def read() -> list[Chunk]:
        async with aclosing(await model.open(MESSAGES, 0.0)) as chunks:
            return [chunk async for chunk in chunks]

    reading = asyncio.create_task(read())
    async with asyncio.timeout(5):
        while len(ollama_server.requests) == sent:
            await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    async with asyncio.timeout(5):
        while ollama_server.closed_early == 0:
            await asyncio.sleep(0.01)
    assert ollama_server.closed_thinking == 1
    ollama_server.first_delay = 0.0
    assert "".join(c.text for c in await collect(model)) == "Ask about fever."


async def test_a_dead_child_fails_its_streams_and_the_next_one_starts_again(
    ollama_server: FakeOllama,
):
    """What a crash in the child must not do: leave a doctor's answer hanging, or the
    assistant dead until the hub restarts."""
    metrics = Metrics()
    model = ModelProcess(assistant_settings(ollama_server), restart_backoff=0.0, metrics=metrics)
    try:
        ollama_server.chunk_delay = 5.0
        async with aclosing(await model.open(MESSAGES, 0.0)) as chunks:
            await anext(chunks)
            first_pid = model.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(AssistantFailed) as failed:
                async with asyncio.timeout(5):
                    await anext(chunks)
            assert failed.value.code == "unavailable"
        ollama_server.chunk_delay = 0.0
        assert "".join(c.text for c in await collect(model)) == "Ask about fever."
        assert model.pid not in (None, first_pid)
        assert metrics.registry.get_sample_value("hub_model_process_exits_total") == 1
    finally:
        await model.close()


async def test_close_ends_the_child(ollama_server: FakeOllama):
    metrics = Metrics()
    model = ModelProcess(assistant_settings(ollama_server), metrics=metrics)
    await model.start()
    pid = model.pid
    assert pid is not None
    await model.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped
    # A stop the hub asked for is not counted as a death.
    assert metrics.registry.get_sample_value("hub_model_process_exits_total") == 0
