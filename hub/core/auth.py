"""JWT authentication: who is on the other end of a connection or an HTTP request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import jwt

from hub.core.errors import Unauthorized
from hub.core.protocol import ID_PATTERN
from hub.core.settings import Settings

Role = Literal["patient", "doctor", "nurse", "staff", "admin"]
ROLES: frozenset[str] = frozenset({"patient", "doctor", "nurse", "staff", "admin"})
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


class TokenVerifier:
    """Verifies tokens with the configured key and algorithm list, nothing else.

    ``exp``, ``sub`` and ``role`` are required; ``aud`` and ``iss`` are checked when
    configured. The algorithm list is pinned by settings, so a token signed with
    ``none`` or with a public key used as an HMAC secret is refused.
    """

    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_verify_key
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer

    def verify(self, token: object) -> Principal:
        if not isinstance(token, str) or not token:
            raise Unauthorized("a token is required")
        required = ["exp", "sub", "role"]
        if self._audience:
            required.append("aud")
        if self._issuer:
            required.append("iss")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": required, "verify_aud": self._audience is not None},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(refusal(exc)) from exc
        user_id, role = claims.get("sub"), claims.get("role")
        if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
            raise Unauthorized("invalid token: sub is not a valid user id")
        if user_id.startswith(RESERVED_PREFIX):
            raise Unauthorized(f"invalid token: subjects starting {RESERVED_PREFIX} are the hub's")
        if not isinstance(role, str) or role not in ROLES:
            raise Unauthorized("invalid token: role must be patient, doctor, nurse, staff or admin")
        name = claims.get("name")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            name = None
        return Principal(user_id=user_id, role=cast(Role, role), name=name and name.strip()[:100])


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


def issue_token(settings: Settings, user_id: str, role: str, ttl: int = 3600) -> str:
    """Sign a token for development and demos with the configured signing key."""
    if role not in ROLES:
        raise ValueError("role must be doctor, patient or admin")
    if not ID_PATTERN.fullmatch(user_id):
        raise ValueError("user id must be 1-128 letters, digits or _ - . : @")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "role": role, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_signing_key, algorithm=settings.jwt_algorithms[0])


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
