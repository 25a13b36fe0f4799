"""``python -m hub demo``: the embedded stack with a doctor, a patient, their
conversation and an appointment, and what to open to see them.

Seeding is idempotent (fixed ids and client ids), so running the demo again on the
same data directory shows the same people and conversation, not copies of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from hub.core import clock
from hub.core.appointment_event import parse_event
from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.server.appkeys import SERVICES

DOCTOR_ID = "dr-demo"
PATIENT_ID = "pat-demo"
APPOINTMENT_ID = "apt-demo"
TOKEN_TTL = 12 * 3600  # seconds: a working day of demo
CONSOLE = Path(__file__).parent / "web" / "index.html"


@dataclass(frozen=True, slots=True)
class Demo:
    conversation_id: str
    appointment_start: datetime
    doctor_token: str
    patient_token: str


async def seed(app: web.Application) -> Demo:
    """Create (or find) the demo's people, conversation, appointment and first message."""
    services = app[SERVICES]
    tomorrow = (clock.now() + timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)
    await services.updates.handle(
        parse_event(
            {
                "event_id": "demo-confirmed",
                "appointment_id": APPOINTMENT_ID,
                "doctor_id": DOCTOR_ID,
                "patient_id": PATIENT_ID,
                "status": "confirmed",
                "start": tomorrow.isoformat(),
                "occurred_at": clock.now().isoformat(),
                "reason": "follow-up",
            }
        )
    )
    await services.directory.put(DOCTOR_ID, "Dr. Maya Chen", "doctor", "Family medicine")
    await services.directory.put(PATIENT_ID, "Sam Patel", "patient", None)
    conversation, _ = await services.conversations.open({DOCTOR_ID, PATIENT_ID}, APPOINTMENT_ID)
    await services.messages.send(
        conversation.conversation_id,
        DOCTOR_ID,
        "demo-welcome",
        "Hello, this is the demo conversation. See you tomorrow.",
        sender_name="Dr. Maya Chen",
    )
    settings = services.settings
    return Demo(
        conversation_id=conversation.conversation_id,
        appointment_start=tomorrow,
        doctor_token=issue_token(settings, DOCTOR_ID, "doctor", TOKEN_TTL),
        patient_token=issue_token(settings, PATIENT_ID, "patient", TOKEN_TTL),
    )


async def probe_ollama(settings: Settings) -> str:
    """One line on the assistant: on, model missing, or no server (2-second timeout)."""
    host, model = settings.assistant.ollama_host, settings.assistant.model
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{host}/api/tags") as response:
                tags = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return (
            f"off: no Ollama server at {host} (HUB_OLLAMA_HOST). Chat and transcripts "
            f"work; assistant requests answer 'unavailable' until one runs "
            f"(ollama serve; ollama pull {model})."
        )
    names = {entry.get("name", "") for entry in tags.get("models", [])}
    if model in names or f"{model}:latest" in names:
        return f"on: {model} at {host}"
    return (
        f"off: Ollama at {host} has no model {model!r}: run `ollama pull {model}` "
        f"(requests answer 'model_not_found' until then)"
    )


def banner(
    settings: Settings,
    demo: Demo,
    embedded: list[str],
    assistant: str,
    worker_metrics: str | None = None,
) -> str:
    base = f"http://{settings.host}:{settings.port}"
    sms = (
        "to Twilio"
        if settings.sms.driver == "twilio"
        else "to the log only, number masked (set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to send)"
    )
    lines = [
        "",
        f"The clinic hub demo is running. Ctrl-C stops it (data stays in {settings.data_dir}).",
        "",
        *(
            [
                f"  Doctor  ({DOCTOR_ID}):  {base}/console/#token={quote(demo.doctor_token)}",
                f"  Patient ({PATIENT_ID}): {base}/console/#token={quote(demo.patient_token)}",
                "",
            ]
            if CONSOLE.exists()
            else []
        ),
        f"  Conversation {demo.conversation_id}; appointment {APPOINTMENT_ID} confirmed for "
        f"{demo.appointment_start:%Y-%m-%d %H:%M} UTC.",
        f"  Socket.IO at {base} with auth {{token}}; tokens valid {TOKEN_TTL // 3600} h:",
        f"    doctor:  {demo.doctor_token}",
        f"    patient: {demo.patient_token}",
        "",
        f"  Embedded: {', '.join(embedded) if embedded else 'nothing (external servers)'}.",
        f"  Assistant: {assistant}",
        f"  SMS: {sms}.",
        f"  Metrics: {base}/metrics   Readiness: {base}/health/ready",
        *([f"  Worker metrics: {worker_metrics}"] if worker_metrics else []),
        f"  Redis (appointment events, e.g. XADD): {settings.redis_url}",
        "",
    ]
    return "\n".join(lines)
