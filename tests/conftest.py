"""Fixtures: real SecantusDB and redis-server processes, real hubs on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hub.compat import asyncio as compat_asyncio
from hub.core.settings import Settings
from hub.server import embedded
from tests.support.clamd import Clamd, start_clamd
from tests.support.fake_ollama import FakeOllama
from tests.support.hubs import (
    JWT_SECRET,
    SCHEMA_BREAKS,
    HubFixture,
    MakeHub,
)

# The in-process hubs run on the asyncio.wait_for that `hub serve` installs.
compat_asyncio.backport_wait_for()


@pytest.fixture(autouse=True)
def hub_speaks_its_schema() -> Iterator[None]:
    """Every server event a test's client received is one of hub.core.schema's, of its
    shape (acks are checked as they come, in Client.call)."""
    SCHEMA_BREAKS.clear()
    yield
    breaks, SCHEMA_BREAKS[:] = list(SCHEMA_BREAKS), []
    assert not breaks, "\n".join(breaks[:5])


@pytest.fixture(scope="session")
def mongodb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.ChildServer]:
    server = embedded.start_mongodb(tmp_path_factory.mktemp("mongodb"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.ChildServer]:
    server = embedded.start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.RedisCluster]:
    """Debian's redis-server 7 in cluster mode: three masters, a replica of each."""
    cluster = embedded.start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("also_on_cluster"):
        metafunc.parametrize("redis_kind", ["node", "cluster"], indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Which Redis the test's hubs use: "node" unless the test is ``also_on_cluster``."""
    return str(getattr(request, "param", "node"))


@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """Debian's clamd, with the tests' own signature of the EICAR test string."""
    server = start_clamd(tmp_path_factory.mktemp("clamd"))
    yield server
    server.stop()


@pytest.fixture
async def ollama_server() -> AsyncIterator[FakeOllama]:
    """A local server that follows Ollama's API (see tests/support/fake_ollama.py)."""
    fake = FakeOllama()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def settings(
    mongodb_server: embedded.ChildServer,
    redis_server: embedded.ChildServer,
    redis_kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Settings:
    """Settings of a test hub: its own database, generous rate limits, real servers. On
    a cluster, Celery's broker stays the single node (docs/operations.md)."""
    redis = {"HUB_REDIS_URL": redis_server.url}
    if redis_kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        redis = {"HUB_REDIS_URL": cluster.url, "HUB_CELERY_BROKER_URL": redis_server.url}
    base = Settings.from_env(
        {
            **redis,
            "HUB_JWT_SECRET": JWT_SECRET,
            "HUB_MONGODB_URL": mongodb_server.url,
            "HUB_MONGODB_DB": f"t_{uuid.uuid4().hex[:12]}",
            "HUB_DATA_DIR": str(tmp_path / "data"),
            "HUB_RATE_CONN_PER_SEC": "1000",
            "HUB_RATE_CONN_BURST": "1000",
            "HUB_RATE_USER_PER_SEC": "1000",
            "HUB_RATE_USER_BURST": "1000",
            "HUB_MONGODB_TIMEOUT": "3",
        }
    )
    return base


@pytest.fixture
async def make_hub(settings: Settings) -> AsyncIterator[MakeHub]:
    """Hubs on loopback, as many as a test asks for, each closed with its clients when
    the test ends (the pattern of aiohttp's ``aiohttp_client``). ``start=False`` gives
    one to adjust before ``start()``."""
    made: list[HubFixture] = []

    async def make(hub_settings: Settings | None = None, *, start: bool = True) -> HubFixture:
        fixture = HubFixture(hub_settings or settings)
        made.append(fixture)
        if start:
            await fixture.start()
        return fixture

    yield make
    for fixture in reversed(made):
        await fixture.close()


@pytest.fixture
async def hub(make_hub: MakeHub) -> HubFixture:
    return await make_hub()
