"""JWT authentication: who is on the other end of a connection or an HTTP request."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import jwt

from hub.core import clock
from hub.core.errors import Unauthorized
from hub.core.jwks import KeySets
from hub.core.protocol import ID_PATTERN
from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT, ROLE_NAMES, OidcIssuer

Role = Literal["patient", "doctor", "nurse", "staff", "admin"]
ROLES: frozenset[str] = ROLE_NAMES
# Everyone but patients: who answers for the clinic.
CLINIC_ROLES: frozenset[str] = ROLES - {"patient"}
# Subjects the hub keeps for itself (the clinic's automatic replies, back-ends' keys).
RESERVED_PREFIX = "system:"
SERVICE_PREFIX = f"{RESERVED_PREFIX}service:"


def service_principal(name: str) -> str:
    """Who a clinic back-end is, as an actor (audit records, export links): a subject no
    token can carry, so that no person can pass for a service."""
    return f"{SERVICE_PREFIX}{name}"


def is_service(principal: str) -> bool:
    return principal.startswith(SERVICE_PREFIX)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user: the ``sub`` and ``role`` claims of a verified token."""

    user_id: str
    role: Role
    name: str | None = None  # the token's ``name`` claim: the directory's until the back-end's
    tenant: str = DEFAULT_TENANT  # the clinic: its identity provider's, never the client's
    expires_at: float | None = None  # the token's ``exp``: when the session ends
    issued_at: float | None = None  # its ``iat``; a revocation refuses tokens from before it


class TokenVerifier:
    """Verifies tokens: the hub's own key (``HUB_JWT_SECRET``/``HUB_JWT_PUBLIC_KEY``), or
    the published keys of an identity provider (``HUB_OIDC_ISSUERS``), nothing else.

    ``exp``, ``sub`` and a role are required; ``aud`` and ``iss`` are checked when
    configured, ``nbf`` when present. The algorithm lists are pinned by settings, so a
    token signed with ``none`` or with a public key used as an HMAC secret is refused.
    A token whose ``iss`` is a provider's is checked with that provider's keys only
    (hub.core.jwks); any other with the hub's own key, if it has one.
    """

    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_secret or settings.jwt_public_key
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._providers = {issuer.issuer: issuer for issuer in settings.oidc_issuers}
        self._tenants: Container[str] = frozenset(settings.tenant_ids)
        self._clinic_issuers: Callable[[], Mapping[str, OidcIssuer]] = dict
        self.key_sets = KeySets(
            settings.oidc_issuers, settings.jwks_timeout, settings.jwks_refetch_after
        )

    def serve(
        self,
        tenants: Container[str],
        issuers: Callable[[], Mapping[str, OidcIssuer]] | None = None,
    ) -> None:
        """Accept the hub's own tokens for the clinics in ``tenants`` (a live view:
        a clinic suspended or removed while the hub runs is refused from then on), and
        the tokens of the clinics' own identity providers, by issuer (``issuers``:
        those of the clinics served now; ``HUB_OIDC_ISSUERS``'s come first)."""
        self._tenants = tenants
        if issuers is not None:
            self._clinic_issuers = issuers

    async def close(self) -> None:
        await self.key_sets.close()

    async def verify(self, token: object) -> Principal:
        """The person a token names; Unauthorized, with a reason in the hub's words, if
        it is not one the hub accepts."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("a token is required")
        provider = self._provider_of(token)
        if provider is not None:
            return await self._verify_issued(token, provider)
        if self._key is None:
            raise Unauthorized("invalid token: unknown issuer")
        required = ["exp", "sub", "role"]
        if self._audience:
            required.append("aud")
        if self._issuer:
            required.append("iss")
        claims = _decode(
            token,
            self._key,
            algorithms=self._algorithms,
            audience=self._audience,
            issuer=self._issuer,
            options={"require": required, "verify_aud": self._audience is not None},
        )
        # The hub's own key speaks for every clinic it serves (``tenant``; ``default``
        # without one): whoever holds that key is the platform, not one clinic.
        tenant = claims.get("tenant", DEFAULT_TENANT)
        if tenant not in self._tenants:
            raise Unauthorized("invalid token: no such clinic on this hub")
        return _principal(claims, claims.get("role"), claims.get("name"), tenant)

    def _provider_of(self, token: str) -> OidcIssuer | None:
        clinics = self._clinic_issuers()
        if not self._providers and not clinics:
            return None
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(refusal(exc)) from exc
        issuer = unverified.get("iss")
        if issuer is None:
            return None
        provider = None
        if isinstance(issuer, str):
            provider = self._providers.get(issuer) or clinics.get(issuer)
        if provider is None and issuer != self._issuer:
            # Checked with the hub's own key it would fail on its algorithm or signature,
            # which sends an operator looking in the wrong place.
            raise Unauthorized("invalid token: unknown issuer")
        return provider

    async def _verify_issued(self, token: str, provider: OidcIssuer) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(refusal(exc)) from exc
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid token: a kid is required")
        if header.get("alg") not in provider.algorithms:
            raise Unauthorized("invalid token: signing algorithm not accepted")
        key = await self.key_sets.key(provider, kid)
        required = ["exp", "sub", "iss"] + (["aud"] if provider.audience else [])
        claims = _decode(
            token,
            key.key,
            algorithms=list(provider.algorithms),
            audience=provider.audience,
            issuer=provider.issuer,
            options={"require": required, "verify_aud": provider.audience is not None},
        )
        tenant = _tenant(claims, provider)
        if tenant not in self._tenants:  # suspended or removed while the hub runs
            raise Unauthorized("invalid token: no such clinic on this hub")
        return _principal(
            claims,
            _role(_claim(claims, provider.roles_claim), provider.role_map),
            _claim(claims, provider.name_claim),
            tenant,
        )


def _tenant(claims: dict[str, Any], provider: OidcIssuer) -> str:
    """The clinic of the token's person: its provider's, or the one its tenant claim
    names among the provider's clinics."""
    if provider.tenant_claim is None:
        return provider.tenant
    named = _claim(claims, provider.tenant_claim)
    if not isinstance(named, str) or named not in provider.tenants:
        raise Unauthorized("invalid token: it names no clinic of its provider")
    return named


# The role a person gets when the provider gives several: the most trusted first.
ROLE_ORDER = ("admin", "doctor", "nurse", "staff", "patient")


def _role(given: object, role_map: Mapping[str, str]) -> str | None:
    """The hub role of a provider's role names: with a ``role_map``, only the names it
    maps grant anything (a provider group that happens to be called ``admin`` does not)."""
    names = [given] if isinstance(given, str) else given if isinstance(given, list) else []
    strings = [n for n in names if isinstance(n, str)]
    hub_roles = {role_map[n] for n in strings if n in role_map} if role_map else set(strings)
    return next((role for role in ROLE_ORDER if role in hub_roles), None)


def _claim(claims: dict[str, Any], path: str) -> object:
    """A claim by name (``https://clinic.example/roles``, as Auth0 namespaces them) or
    by dotted path (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


LEEWAY = 5.0  # seconds of clock skew allowed between the token's issuer and the hub


def _decode(token: str, key: Any, options: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The token's claims once its signature and claims are checked; ``exp`` and ``nbf``
    against the hub's clock (hub.core.clock), not PyJWT's own reading of the time."""
    times = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, options=cast(Any, {**options, **times}), **kwargs
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(refusal(exc)) from exc
    now = clock.timestamp()
    for claim in ("exp", "nbf", "iat"):
        if claim in claims and not isinstance(claims[claim], int | float):
            raise Unauthorized(f"invalid token: {claim} must be a number")
    if "exp" in claims and claims["exp"] <= now - LEEWAY:
        raise Unauthorized("token expired")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY:
        raise Unauthorized("token not valid yet")
    return claims


def _principal(claims: dict[str, Any], role: object, name: object, tenant: str) -> Principal:
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
        raise Unauthorized("invalid token: sub is not a valid user id")
    if user_id.startswith(RESERVED_PREFIX):
        raise Unauthorized(f"invalid token: subjects starting {RESERVED_PREFIX} are the hub's")
    if not isinstance(role, str) or role not in ROLES:
        raise Unauthorized("invalid token: role must be patient, doctor, nurse, staff or admin")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        name = None
    expires_at, issued_at = claims.get("exp"), claims.get("iat")
    return Principal(
        user_id=user_id,
        role=cast(Role, role),
        name=name and name.strip()[:100],
        tenant=tenant,
        expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        issued_at=float(issued_at) if isinstance(issued_at, int | float) else None,
    )


def refusal(exc: jwt.PyJWTError) -> str:
    """Why a token was refused, in the hub's words.

    PyJWT's own text quotes its internals (decoder errors, key types, object
    addresses) and is never passed on to an unauthenticated client.
    """
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "invalid token: wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "invalid token: wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"invalid token: the {exc.claim} claim is required"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "invalid token: signing algorithm not accepted"
    if isinstance(exc, jwt.InvalidSignatureError | jwt.InvalidKeyError):
        return "invalid token: bad signature"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


def issue_token(
    settings: Settings, user_id: str, role: str, ttl: int = 3600, tenant: str = DEFAULT_TENANT
) -> str:
    """Sign a token for development and demos with the configured signing key."""
    if role not in ROLES:
        raise ValueError("role must be doctor, patient or admin")
    if not ID_PATTERN.fullmatch(user_id):
        raise ValueError("user id must be 1-128 letters, digits or _ - . : @")
    now = int(clock.timestamp())
    claims: dict[str, object] = {"sub": user_id, "role": role, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if tenant != DEFAULT_TENANT:
        claims["tenant"] = tenant
    return jwt.encode(claims, settings.jwt_signing_key, algorithm=settings.jwt_algorithms[0])


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
