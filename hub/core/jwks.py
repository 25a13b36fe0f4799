"""The signing keys identity providers publish (JWKS), fetched and kept per issuer.

What the cache promises:

* Keys are kept per issuer, then per ``kid``: a token is checked only with a key its
  own issuer published, never with another issuer's key of the same ``kid``.
* A set is kept as long as its ``Cache-Control: max-age`` says (5 minutes without
  one), then fetched again when next needed; a failed fetch keeps the keys held.
* A ``kid`` the issuer's set lacks (a rotation) fetches the set again, at most once
  per ``HUB_JWKS_REFETCH_AFTER`` (a minute) per issuer, so that tokens with made-up
  ``kid``s cannot make the hub hammer the provider.
* A provider that is down never fails a request with anything but ``unauthorized``:
  tokens of keys held still pass; new ``kid``s are refused until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson

from hub.core.errors import Unauthorized
from hub.core.tenants import OidcIssuer

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 300.0  # seconds a set without Cache-Control is kept
MAX_KEYS_BYTES = 256 * 1024  # a JWKS document larger than this is refused
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(slots=True)
class _IssuerKeys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    jwks_url: str | None = None  # found through discovery when not configured
    configured: str | None = None  # the entry's own jwks_url
    fresh_until: float = 0.0  # monotonic
    fetched_at: float | None = None  # monotonic, of the last attempt
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeySets:
    def __init__(
        self, issuers: tuple[OidcIssuer, ...], timeout: float, refetch_after: float
    ) -> None:
        self._refetch_after = refetch_after
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._held = {
            issuer.issuer: _IssuerKeys(jwks_url=issuer.jwks_url, configured=issuer.jwks_url)
            for issuer in issuers
        }
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # how many times a set was fetched (the tests count them)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def key(self, issuer: OidcIssuer, kid: str) -> jwt.PyJWK:
        """The key ``kid`` of ``issuer``; Unauthorized if it has none (or cannot say)."""
        held = self._held.get(issuer.issuer)
        if held is None or held.configured != issuer.jwks_url:
            # A clinic's provider, added or changed while the hub runs.
            held = self._held[issuer.issuer] = _IssuerKeys(
                jwks_url=issuer.jwks_url, configured=issuer.jwks_url
            )
        now = time.monotonic()
        if kid in held.keys and now < held.fresh_until:
            return held.keys[kid]
        async with held.lock:  # one fetch at a time per issuer; the others wait for it
            now = time.monotonic()
            wanted = now >= held.fresh_until or kid not in held.keys
            rested = held.fetched_at is None or now - held.fetched_at >= self._refetch_after
            if wanted and rested:
                await self._fetch(issuer, held)
        found = held.keys.get(kid)
        if found is None:
            raise Unauthorized("invalid token: unknown signing key")
        return found

    async def _fetch(self, issuer: OidcIssuer, held: _IssuerKeys) -> None:
        held.fetched_at = time.monotonic()
        self.fetches += 1
        try:
            if held.jwks_url is None:
                discovery = f"{issuer.issuer.rstrip('/')}/.well-known/openid-configuration"
                document, _ = await self._get_json(discovery)
                jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(
                    ("https://", "http://")
                ):
                    raise ValueError("the discovery document has no jwks_uri")
                held.jwks_url = jwks_uri
            document, max_age = await self._get_json(held.jwks_url)
            keys = _parse(document, issuer)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "keys of issuer=%s could not be fetched (%s): keeping the %d held",
                issuer.issuer,
                type(exc).__name__,
                len(held.keys),
            )
            return
        held.keys = keys
        held.fresh_until = time.monotonic() + max_age
        log.info("keys of issuer=%s fetched: %d, kept %.0fs", issuer.issuer, len(keys), max_age)

    async def _get_json(self, url: str) -> tuple[Any, float]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(url, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.content.read(MAX_KEYS_BYTES + 1)
            if len(body) > MAX_KEYS_BYTES:
                raise ValueError("the document is too large")
            cache = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
            max_age = float(cache.group(1)) if cache else DEFAULT_MAX_AGE
            try:
                return orjson.loads(body), max_age
            except orjson.JSONDecodeError:
                raise ValueError("not JSON") from None


def _parse(document: Any, issuer: OidcIssuer) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document that the issuer's algorithms may use."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        if "alg" in entry and entry["alg"] not in issuer.algorithms:
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm=entry.get("alg", issuer.algorithms[0]))
        except jwt.PyJWTError:
            continue  # a key type this hub cannot use: skipped, the others serve
    return keys
