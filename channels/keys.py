"""Redis keys, channels and Socket.IO room names: each spelled here, once."""

from __future__ import annotations

SOCKETIO_CHANNEL = "hub:socketio"


def user_room(user_id: str) -> str:
    """The Socket.IO room every device of a user joins."""
    return f"user:{user_id}"


def presence_key(user_id: str) -> str:
    """Sorted set of the user's live sockets, scored by the time they expire."""
    return f"hub:presence:{user_id}"
