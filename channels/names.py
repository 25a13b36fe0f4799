"""Redis keys and channels: each spelled here, once, within its clinic (Socket.IO rooms:
``hub.core.rooms``). A clinic's keys start ``hub:`` plus its prefix (``tenant_prefix``)."""

from __future__ import annotations

from hub.core.rooms import tenant_prefix

SOCKETIO_CHANNEL = "hub:socketio"  # one for the hub: the rooms it carries name the clinic
CONTROL_CHANNEL = "hub:control"  # what every hub must act on: its messages name the clinic
SWEEP_LEASE = "hub:lease:sweeps"  # held by the hub that sweeps the clinics idle on every hub


def room_channel(channel: str, room: str) -> str:
    """Where an emit to ``room`` goes: heard by the hubs with a socket in the room."""
    return f"{channel}#{room}"


def host_channel(channel: str, host_id: str) -> str:
    """Where an ack goes back to the hub that asked for it."""
    return f"{channel}@{host_id}"


def _key(tenant: str, rest: str) -> str:
    return f"hub:{tenant_prefix(tenant)}{rest}"


def presence_key(tenant: str, user_id: str) -> str:
    """Sorted set of the user's live sockets, scored by the time they expire."""
    return _key(tenant, f"presence:{user_id}")


def consultation_version_key(tenant: str, consultation_id: str) -> str:
    """A random token replaced after every write to the consultation or its transcript."""
    return _key(tenant, f"consultation:{consultation_id}:version")


def appointments_stream(tenant: str) -> str:
    """Stream of the clinic's appointment state changes, read by the group below."""
    return _key(tenant, "appointments")


APPOINTMENTS_GROUP = "hub"


def appointments_dead(tenant: str) -> str:
    """Stream of the clinic's invalid events, each with the reason it was refused. Its
    hash tag is the stream's name, so both live in one cluster slot (an entry is moved
    to it and acknowledged in one transaction)."""
    return "{" + appointments_stream(tenant) + "}:dead"


def appointments_channel(tenant: str) -> str:
    """Pub/sub channel for publishers that only PUBLISH (best effort: missed while no
    hub runs)."""
    return _key(tenant, "appointments")
