"""The hub's errors: one tree, one root, one mapping to the wire.

    HubError                      code
    ├── BadRequest                bad_request
    ├── Unauthorized              unauthorized
    ├── Forbidden                 forbidden
    ├── NotFound                  not_found
    ├── Conflict                  conflict
    ├── TooLarge                  too_large     (an upload over its limit)
    ├── UnsupportedType           unsupported_type (an upload's bytes: not an allowed type)
    ├── RateLimited               rate_limited
    ├── Unavailable               unavailable   (MongoDB, Redis or another dependency failed)
    │   └── ScannerUnavailable    unavailable   (clamd did not give a verdict)
    ├── InternalError             internal
    ├── ConfigError               internal      (bad settings; raised at start-up only)
    ├── SmsFailed                 sms_failed    (in the worker: Twilio refused or was unreachable)
    └── AssistantFailed           unavailable, timeout or model_not_found (assistant:error)

Library errors (PyMongoError, RedisError, ...) are translated at the edge with
``raise ... from exc``; :func:`to_hub_error` is the one place that does it for errors
that escape a handler.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Root of every error the hub raises on purpose."""

    code = "internal"
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    def to_wire(self) -> dict[str, Any]:
        """The ``{ok: false, error: {code, message}}`` answer of the protocol."""
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


class BadRequest(HubError):
    code = "bad_request"
    default_message = "bad request"


class Unauthorized(HubError):
    code = "unauthorized"
    default_message = "authentication required"


class Forbidden(HubError):
    code = "forbidden"
    default_message = "not allowed"


class NotFound(HubError):
    code = "not_found"
    default_message = "not found"


class Conflict(HubError):
    code = "conflict"
    default_message = "conflict"


class TooLarge(HubError):
    code = "too_large"
    default_message = "the file is too large"


class UnsupportedType(HubError):
    """The upload is not one of the allowed types, or hides another format."""

    code = "unsupported_type"
    default_message = "this type of file is not accepted"


class RateLimited(HubError):
    code = "rate_limited"
    default_message = "too many requests, slow down"


class Unavailable(HubError):
    code = "unavailable"
    default_message = "a dependency of the hub is unavailable, try again"


class ScannerUnavailable(Unavailable):
    default_message = "the malware scanner is unavailable"


class InternalError(HubError):
    code = "internal"
    default_message = "internal error"


class ConfigError(HubError):
    """A setting is missing or invalid; the message names the variable."""

    code = "internal"


class SmsFailed(HubError):
    """Sending an SMS failed; ``retryable`` says whether trying again can help."""

    code = "sms_failed"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        twilio_code: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.twilio_code = twilio_code
        self.status = status


class AssistantFailed(HubError):
    """A generation failed; sent to the doctor as ``assistant:error {code, message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def to_hub_error(exc: BaseException) -> HubError:
    """Map any exception that escaped a handler to the hub error sent on the wire.

    Never exposes the original message of an unexpected exception: it may carry a
    traceback fragment or user content.
    """
    if isinstance(exc, HubError):
        return exc
    # Imported here so that this module stays importable without the drivers.
    from pymongo.errors import PyMongoError
    from redis.exceptions import RedisClusterException, RedisError

    # RedisClusterException (no node of a cluster reachable) is not a RedisError.
    failures = PyMongoError | RedisError | RedisClusterException | TimeoutError | ConnectionError
    if isinstance(exc, failures):
        return Unavailable()
    return InternalError()
