"""Redis keys and channels: each spelled here, once (Socket.IO rooms: ``hub.core.rooms``)."""

from __future__ import annotations

SOCKETIO_CHANNEL = "hub:socketio"


def presence_key(user_id: str) -> str:
    """Sorted set of the user's live sockets, scored by the time they expire."""
    return f"hub:presence:{user_id}"


def consultation_version_key(consultation_id: str) -> str:
    """A random token replaced after every write to the consultation or its transcript."""
    return f"hub:consultation:{consultation_id}:version"


APPOINTMENTS_STREAM = "hub:appointments"
"""Stream of appointment state changes, read by the consumer group below."""
APPOINTMENTS_GROUP = "hub"
APPOINTMENTS_DEAD = "hub:appointments:dead"
"""Stream of invalid events, each with the reason it was refused."""
APPOINTMENTS_CHANNEL = "hub:appointments"
"""Pub/sub channel for publishers that only PUBLISH (best effort: missed while no hub runs)."""
