"""httpx's transport interface over aiohttp, for the ``ollama`` client's streams.

The ``ollama`` client reads a streamed answer through httpx, one NDJSON line per token.
On httpx's own transport every read goes through httpcore, h11 and an anyio cancel
scope: at 50 answers of 30 tokens a second, about 40% of the model process's CPU
(py-spy, docs/performance.md). This transport hands the same requests to an aiohttp
session, whose C parser reads the chunks for less. The ``ollama`` client, its request
building and its parsing of each line stay as they are.

Errors come back as httpx's, so callers keep one mapping: a refused or failed
connection is ``httpx.ConnectError``, a connect or read that outlasts httpx's timeout
is ``httpx.ConnectTimeout`` or ``httpx.ReadTimeout``, and a connection lost in the
middle of an answer is ``httpx.ReadError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout("connecting timed out", request=request) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout("reading timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError("cannot connect", request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpx.ReadError(type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():  # as each chunk comes
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to the end: the connection can be reused
        else:
            self._response.close()  # cut short: the server stops generating


class _Response(httpx.Response):
    """httpx's response, which lets go of its stream once closed.

    httpx's client wraps the stream in one that points back at the response, a reference
    cycle that only the garbage collector frees, with the aiohttp response and headers
    hanging off it: about 40 objects a request, and at 50 answers streaming the hub's
    young collections took up to 40 ms to free them. Dropping the stream at close
    breaks the cycle, so reference counting frees it all at once."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self.stream = httpx.ByteStream(b"")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session, made at the first request (inside the running loop)."""

    def __init__(self, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=False,  # httpx decodes what the headers say
            )
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        with _httpx_errors(request):
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=[
                    (k, v)
                    for k, v in request.headers.multi_items()
                    if k not in ("host", "content-length", "transfer-encoding")
                ],
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=timeout,
            )
        return _Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
