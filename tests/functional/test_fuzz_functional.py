"""Fuzzing (Hypothesis) against a real hub: every event's payload, and raw Engine.IO
frames. Every event is answered with an ack of the protocol's shape and never
``internal``, the hub keeps answering, and nothing a client sends writes a traceback.

Marked ``fault``; ``HUB_FUZZ_EXAMPLES`` sets the number of cases per test (CI: the
default)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.core.protocol import ERROR_CODES, Event
from tests.support.hubs import TIMEOUT, HubFixture
from tests.support.raw_socket import raw_socket

pytestmark = pytest.mark.fault

EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "1500"))
EVENTS = sorted(value for name, value in vars(Event).items() if name.isupper())
# Field names of the protocol's payloads, so that fuzzed objects often get past "missing".
FIELDS = [
    "conversation_id",
    "client_id",
    "body",
    "member_ids",
    "appointment_id",
    "seq",
    "before_seq",
    "limit",
    "cursors",
    "typing",
    "user_ids",
    "before",
    "unread_only",
    "ids",
    "consultation_id",
    "speaker",
    "text",
    "at",
    "after_seq",
    "question",
    "auto",
    "from",
]
T = TypeVar("T")

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # JSON-encodable
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from(["", "a" * 5000, "../../etc", "$gt", "2026-12-01T09:00:00Z"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=5)
    ),
    max_leaves=20,
)
payloads = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values
frames = st.text(st.characters(exclude_categories=("Cs",)), max_size=60) | st.builds(
    lambda kind, rest: kind + rest,
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "3",
            "4",
            "40",
            "41",
            "42",
            "43",
            "44",
            "45",
            "46",
            "421",
            "42/x,",
            "451-",
            "b",
            "6",
            "9",
        ]
    ),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
)


# Frames after which a client gets no answer on that session, by its own doing: it
# ended the session (Engine.IO CLOSE, Socket.IO DISCONNECT), or announced binary
# attachments, so its next frames are taken as those (and the hub closes the socket
# when they do not match: engineio's state for it could not recover).
ENDS_SESSION = ("1", "41", "45", "46")


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [
        r
        for r in caplog.records
        if r.exc_info or "Traceback" in r.getMessage() or r.levelname == "ERROR"
    ]
    assert noisy == [], [f"{r.name}: {r.getMessage()}" for r in noisy][:5]


def well_formed(ack: Any) -> None:
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
    if not ack["ok"]:
        error = ack["error"]
        assert error["code"] in ERROR_CODES and error["code"] != "internal", ack
        assert isinstance(error["message"], str) and error["message"], ack


def run_in(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` on the test's loop from Hypothesis's thread."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(TIMEOUT * 2)  # type: ignore[arg-type]


async def test_every_event_answers_fuzzed_payloads_in_the_protocols_shape(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    loop = asyncio.get_running_loop()
    doctor = await hub.connect(hub.user("fuzz-dr"), "doctor")
    patient = await hub.connect(hub.user("fuzz-pat"), "patient")
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    assert opened["ok"]

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(event=st.sampled_from(EVENTS), payload=payloads, as_doctor=st.booleans())
    def check(event: str, payload: Any, as_doctor: bool) -> None:
        client = doctor if as_doctor else patient
        well_formed(run_in(loop, client.call(event, payload)))

    await asyncio.to_thread(check)
    for client in (doctor, patient):
        assert client.sio.connected
        assert (await client.call("conversation:list", {}))["ok"]
    no_traceback(caplog)


async def test_raw_frames_leave_the_hub_answering_and_the_log_clean(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    loop = asyncio.get_running_loop()
    user_id = hub.user("fuzz-raw")
    base, token = str(hub.servers[0].make_url("/")), hub.token(user_id, "patient")

    async def send_then_check(frame: str) -> None:
        async with raw_socket(base, token) as sock:
            await sock.send(frame)
            try:
                # Whether it answers, not how fast (the shared store is busy under the
                # suite); a frame that may end the session is given less.
                wait = 2.0 if frame.startswith(ENDS_SESSION) else TIMEOUT
                ack = await asyncio.wait_for(sock.call("conversation:list", {}), wait)
            except (AssertionError, TimeoutError):  # closed, or no answer
                assert frame.startswith(ENDS_SESSION), f"no answer after {frame!r}"
                return
            well_formed(ack)

    @settings(
        max_examples=EXAMPLES // 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frame=frames)
    def check(frame: str) -> None:
        run_in(loop, send_then_check(frame))

    await asyncio.to_thread(check)
    async with raw_socket(base, token) as sock:  # and the hub still takes new sessions
        well_formed(await sock.call("conversation:list", {}))
    no_traceback(caplog)
