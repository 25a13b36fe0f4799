"""Collection names: spelled here once, imported everywhere else."""

from __future__ import annotations

CONVERSATIONS = "conversations"
MESSAGES = "messages"
READ_CURSORS = "read_cursors"
APPOINTMENTS = "appointments"
APPOINTMENT_EVENTS = "appointment_events"
NOTIFICATIONS = "notifications"
SERVICE_KEYS = "service_keys"
CONTACTS = "contacts"
SMS_STOPS = "sms_stops"  # numbers that replied STOP (or Twilio says unsubscribed)
SMS_OUTBOX = "sms_outbox"
SMS_WINDOWS = "sms_windows"  # per conversation and recipient: when the next SMS may go
SMS_DAILY = "sms_daily"  # per recipient and local day: how many were sent
CONSULTATIONS = "consultations"
TRANSCRIPT = "transcript_segments"
ASSISTANT_OUTPUTS = "assistant_outputs"
AUDIT = "audit"
STAFF_NOTES = "staff_notes"  # staff-only notes: a message store of their own
ATTACHMENTS = "attachments"
ATTACHMENT_FILES = "attachment_files"  # the GridFS bucket: attachment_files.files, .chunks
PUSH_DEVICES = "push_devices"  # one per browser subscription or FCM token
PUSH_OUTBOX = "push_outbox"  # one per cause and device: a push goes out at most once
CLINIC = "clinic"  # the clinic's settings set by its back-end (office hours)
DIRECTORY = "directory"  # display names, roles, titles and pools of people
POOLS = "pools"  # the clinic's inboxes: triage, front desk, a doctor's team
INBOX = "inbox"  # per pool conversation: its pool and its owner
MESSAGE_VERSIONS = "message_versions"  # what a message said before each edit or retraction
MESSAGE_EXPIRIES = "message_expiries"  # which seqs the retention policy deleted, by change
HOLDS = "legal_holds"  # patients and conversations the retention policy must not touch
EXPORTS = "exports"  # patients' exports: the job, then its files
EXPORT_FILES = "export_files"  # the GridFS bucket of built exports
JOBS = "jobs"  # leases of periodic jobs that one hub at a time runs (retention)
WEBHOOKS = "webhooks"  # back-ends' subscriptions to the hub's events
WEBHOOK_OUTBOX = "webhook_outbox"  # one row per subscription and event: queued, sent, dead
REVOCATIONS = "revocations"  # per person: tokens issued before ``revoked_at`` are refused
# The platform's, in its own database (HUB_MONGODB_DB), not any clinic's:
CLINICS = "platform_clinics"  # every clinic, its state and its own settings
OPERATOR_KEYS = "platform_operator_keys"  # keys of /api/v1/clinics, hashed
PLATFORM_HUBS = "platform_hubs"  # per hub process: its sockets per clinic, when it said so
PLATFORM_ACTIVITY = "platform_activity"  # per clinic: messages today (UTC), the last one's time
