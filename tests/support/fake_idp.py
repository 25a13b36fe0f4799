"""A local identity provider with several issuers, as Keycloak lays them out: per issuer
``/.well-known/openid-configuration`` naming its ``jwks_uri``, and the JWK set there,
served with ``Cache-Control``. Keys rotate by adding and removing them; ``down``
makes every answer a 503. Tokens are signed here with RS256."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class Issuer:
    path: str
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeIdp:
    def __init__(self, *paths: str) -> None:
        self.issuers = {path: Issuer(path) for path in paths}
        self.down = False
        self.fetches: dict[str, int] = {path: 0 for path in paths}
        self.server: TestServer | None = None

    async def start(self) -> FakeIdp:
        app = web.Application()
        app.router.add_get("/{issuer}/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/{issuer}/jwks", self._jwks)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/{path}"))

    def token(self, path: str, kid: str, *, signer: str | None = None, **claims: Any) -> str:
        """A token of issuer ``path`` naming ``kid``, signed with the key ``kid`` of issuer
        ``signer`` (default: the same issuer)."""
        key = self.issuers[signer or path].keys[kid]
        now = int(time.time())
        body = {"iss": self.url(path), "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
        body.update(claims)
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})

    async def _discovery(self, request: web.Request) -> web.Response:
        path = request.match_info["issuer"]
        if self.down or path not in self.issuers:
            return web.Response(status=503)
        return web.json_response({"issuer": self.url(path), "jwks_uri": f"{self.url(path)}/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        path = request.match_info["issuer"]
        if self.down or path not in self.issuers:
            return web.Response(status=503)
        self.fetches[path] += 1
        keys = []
        for kid, key in self.issuers[path].keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys}, headers={"Cache-Control": "max-age=300"})
