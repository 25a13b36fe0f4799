"""ClamAV's daemon over its socket protocol: ``INSTREAM``, ``PING``.

The file goes to ``clamd`` in chunks, each prefixed by its length as four bytes in
network order, ended by a zero length; the daemon answers one line ending in a NUL:
``stream: OK``, ``stream: <signature> FOUND`` or ``... ERROR``. One connection per
scan (``z``-prefixed commands, NUL-terminated). See clamd(8).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from hub.core.errors import ConfigError, ScannerUnavailable

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    clean: bool
    signature: str | None = None  # the name of what was found (not PHI: ClamAV's own)


class Clamd:
    """A client of one ``clamd``: ``tcp://host:port`` or ``unix:///path/to/clamd.ctl``."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            self._where: tuple[str, int] | str = (parts.hostname, parts.port)
        elif parts.scheme == "unix" and parts.path:
            self._where = parts.path
        else:
            raise ConfigError("HUB_CLAMD_URL: expected tcp://host:port or unix:///path")
        self._timeout = timeout
        self.url = url

    async def ping(self) -> None:
        """Raises ScannerUnavailable unless the daemon answers PONG."""
        reply = await self._call(b"zPING\0", None)
        if reply != "PONG":
            raise ScannerUnavailable(f"clamd answered {reply!r} to PING")

    async def scan(self, chunks: AsyncIterator[bytes]) -> Verdict:
        """Scan the stream. Raises ScannerUnavailable when the daemon cannot say
        (down, timed out, over its StreamMaxLength, any ERROR): never a clean verdict
        it did not give."""
        reply = await self._call(b"zINSTREAM\0", chunks)
        if reply.endswith(" FOUND"):
            signature = reply.removeprefix("stream:").removesuffix(" FOUND").strip()
            return Verdict(clean=False, signature=signature)
        if reply == "stream: OK":
            return Verdict(clean=True)
        raise ScannerUnavailable(f"clamd could not scan: {reply[:200]}")

    async def _call(self, command: bytes, chunks: AsyncIterator[bytes] | None) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(self._where, str):
                    reader, writer = await asyncio.open_unix_connection(self._where)
                else:
                    reader, writer = await asyncio.open_connection(*self._where)
                try:
                    writer.write(command)
                    if chunks is not None:
                        async for chunk in chunks:
                            for start in range(0, len(chunk), CHUNK):
                                part = chunk[start : start + CHUNK]
                                writer.write(struct.pack("!L", len(part)) + part)
                                await writer.drain()
                        writer.write(struct.pack("!L", 0))
                    await writer.drain()
                    reply = await reader.readuntil(b"\0")
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ScannerUnavailable(f"clamd at {self.url}: {type(exc).__name__}") from exc
        except asyncio.LimitOverrunError as exc:
            raise ScannerUnavailable("clamd sent an overlong answer") from exc
        return reply.rstrip(b"\0").decode("utf-8", "replace").strip()
