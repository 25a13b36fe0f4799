"""Collection names: spelled here once, imported everywhere else."""

from __future__ import annotations

CONVERSATIONS = "conversations"
MESSAGES = "messages"
READ_CURSORS = "read_cursors"
APPOINTMENTS = "appointments"
APPOINTMENT_EVENTS = "appointment_events"
NOTIFICATIONS = "notifications"
SERVICE_KEYS = "service_keys"
