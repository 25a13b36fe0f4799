"""A real ClamAV daemon (Debian's ``clamd``) on loopback, with a signature database the
tests write themselves: the EICAR test string as a body signature (``.ndb``), found
anywhere in any file, without downloading ClamAV's official database."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.server import embedded

# The anti-malware test file of EICAR; scanners report it as if it were a virus.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Hub.Test.EICAR"
START_TIMEOUT = 60.0


def clamd_binary() -> str:
    found = shutil.which("clamd") or next(
        (p for p in ("/usr/sbin/clamd", "/usr/bin/clamd") if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError("clamd is not installed: apt-get install clamav-daemon (.ci/run does)")
    return found


@dataclass
class Clamd:
    process: subprocess.Popen[bytes]
    port: int
    socket_path: Path
    log_path: Path

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_clamd(directory: Path, port: int | None = None) -> Clamd:
    """Start clamd in the foreground, listening on a TCP port and a unix socket; return
    once it answers PING."""
    database = directory / "db"
    database.mkdir(parents=True, exist_ok=True)
    (database / "hub-test.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
    port = port or embedded.free_port()
    socket_path = directory / "clamd.sock"
    log_path = directory / "clamd.log"
    config = directory / "clamd.conf"
    config.write_text(
        "\n".join(
            [
                "Foreground yes",
                f"DatabaseDirectory {database}",
                f"LocalSocket {socket_path}",
                "TCPAddr 127.0.0.1",
                f"TCPSocket {port}",
                f"LogFile {log_path}",
                f"PidFile {directory / 'clamd.pid'}",
                "StreamMaxLength 64M",
                "SelfCheck 0",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [clamd_binary(), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Clamd(process, port, socket_path, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text() if log_path.exists() else ""
            raise RuntimeError(f"clamd exited with {process.returncode}:\n{log[-2000:]}")
        if _pong(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"clamd did not answer PING within {START_TIMEOUT}s")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"zPING\0")
            return conn.recv(16).startswith(b"PONG")
    except OSError:
        return False
