"""Socket.IO room names: each spelled here, once."""

from __future__ import annotations


def user_room(user_id: str) -> str:
    """The Socket.IO room every device of a user joins."""
    return f"user:{user_id}"


def consultation_room(consultation_id: str) -> str:
    """The Socket.IO room of a consultation's doctor and patient devices (transcript)."""
    return f"consultation:{consultation_id}"
