"""Bad input from a client: every event is answered, nothing reaches the hub's own
handlers that should not, and nothing a client sends writes a traceback."""

from __future__ import annotations

import logging
from dataclasses import replace

import aiohttp
import orjson
import pytest

from hub.core.protocol import SOCKETIO_PATH
from hub.core.settings import RateLimit
from tests.support.hubs import TIMEOUT, HubFixture
from tests.support.raw_socket import RawSocket, closed, raw_socket


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert noisy == [], [f"{r.name}: {r.getMessage()}" for r in noisy]


async def connect_raw(hub: HubFixture, name: str = "pat"):
    user_id = hub.user(name)
    return user_id, raw_socket(str(hub.servers[0].make_url("/")), hub.token(user_id, "patient"))


async def still_answers(sock: RawSocket) -> None:
    ack = await sock.call("conversation:list", {})
    assert ack["ok"] is True, ack


async def test_text_cut_in_the_middle_of_an_emoji_is_stored_with_a_replacement_character(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    """orjson refused the lone surrogate that JSON.stringify writes for such text:
    a traceback, and no ack ever, so the client timed out."""
    doctor = await hub.connect(hub.user("doc"), "doctor")
    patient_id, connecting = await connect_raw(hub)
    async with connecting as sock:
        opened = await doctor.call("conversation:open", {"member_ids": [patient_id]})
        conversation_id = opened["conversation"]["id"]
        ack_id = sock.new_id()
        # As the official JS client writes it: the surrogate as a JSON escape.
        await sock.send(
            f'42{ack_id}["message:send",{{"conversation_id":"{conversation_id}",'
            '"client_id":"c1","body":"see you \\ud83d"}]'
        )
        ack = await sock.ack(ack_id)
        assert ack["ok"] is True, ack
        assert ack["message"]["body"] == "see you \ufffd"
        pushed = await doctor.wait_for("message:new")
        assert pushed["message"]["body"] == "see you \ufffd"
    no_traceback(caplog)


@pytest.mark.parametrize(
    "payload",
    [
        '["message:send",NaN]',
        '["message:send",{"body":Infinity}]',
        '["message:send",' + "[" * 3000 + "]" * 3000 + "]",
        '["message:send",{"body":"unterminated}]',
    ],
)
async def test_a_payload_that_is_not_json_is_answered_bad_request(
    hub: HubFixture, caplog: pytest.LogCaptureFixture, payload: str
):
    """These wrote a traceback and were never answered."""
    _, connecting = await connect_raw(hub)
    async with connecting as sock:
        ack_id = sock.new_id()
        await sock.send(f"42{ack_id}{payload}")
        ack = await sock.ack(ack_id)
        assert ack == {
            "ok": False,
            "error": {"code": "bad_request", "message": "the payload is not valid JSON"},
        }
        await still_answers(sock)
    no_traceback(caplog)


@pytest.mark.parametrize(
    "name, message",
    [
        ('"disconnect"', "unknown event 'disconnect'"),
        ('"connect"', "unknown event 'connect'"),
        # python-socketio's catch-all key: its handler got the payload as the sid, raised
        # TypeError ("Task exception was never retrieved") and sent no ack.
        ('"*"', "unknown event '*'"),
        ("5", "the event name must be a string"),
        ('{"a":1}', "the event name must be a string"),
    ],
)
async def test_reserved_and_non_string_event_names_are_refused(
    hub: HubFixture, caplog: pytest.LogCaptureFixture, name: str, message: str
):
    """``42["disconnect"]`` reached the hub's own disconnect handler: the socket stayed
    open and every later event answered ``not connected``; a non-string name raised
    in the router."""
    _, connecting = await connect_raw(hub)
    async with connecting as sock:
        ack_id = sock.new_id()
        await sock.send(f"42{ack_id}[{name},{{}}]")
        assert await sock.ack(ack_id) == {
            "ok": False,
            "error": {"code": "bad_request", "message": message},
        }
        await sock.send(f"42[{name}]")  # without an ack id: nothing to answer
        await still_answers(sock)
    no_traceback(caplog)


@pytest.mark.parametrize(
    "frame",
    [
        "x",  # not an Engine.IO packet
        "",  # empty
        "b!!!",  # bad base64
        "b\x80",  # base64 with a character outside ASCII (fuzzing)
        "9",  # unknown Engine.IO packet type
        "47",  # unknown Socket.IO packet type
        '44{"message":"x"}',  # CONNECT_ERROR sent by a client
        "42" + "1" * 120 + '["conversation:list",{}]',  # an ack id of 120 digits
        "42NaN",
        "2probe",
    ],
)
async def test_garbage_frames_leave_one_line_and_the_connection_working(
    hub: HubFixture, caplog: pytest.LogCaptureFixture, frame: str
):
    _, connecting = await connect_raw(hub)
    async with connecting as sock:
        await sock.send(frame)
        await still_answers(sock)
    no_traceback(caplog)


async def test_binary_attachments_out_of_range_close_the_socket(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    """A placeholder pointing past the attachments wedged the connection: a traceback
    on every later frame."""
    _, connecting = await connect_raw(hub)
    async with connecting as sock:
        await sock.send('451-["conversation:list",{"_placeholder":true,"num":5}]')
        await sock.send(b"\x01\x02")
        assert await closed(sock)
    no_traceback(caplog)


async def test_garbage_polling_bodies_write_no_traceback(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    base = str(hub.servers[0].make_url(f"/{SOCKETIO_PATH}/"))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(base, params={"EIO": "4", "transport": "polling"}) as opened:
            sid = orjson.loads((await opened.text())[1:])["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        async with session.post(base, params=params, data="40") as response:
            assert response.status == 200
        for body in (b"\xff\xfe garbage", "x\x1ey\x1e", "b!!!", "4" + "[" * 5000):
            async with session.post(base, params=params, data=body) as response:
                assert response.status in (200, 400)
    no_traceback(caplog)


async def test_unknown_events_are_rate_limited_and_logged_once_per_interval(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    """Unknown events skipped the rate limiter (5,000 answered in a row), and every
    rate-limited event wrote a log line of its own."""
    settings = replace(hub.settings, rate_conn=RateLimit(rate=1.0, burst=5.0))
    server = await hub.start(settings)
    user_id = hub.user("flood")
    caplog.set_level(logging.INFO, logger="hub.events")
    async with raw_socket(str(server.make_url("/")), hub.token(user_id, "patient")) as sock:
        codes = [(await sock.call("no:such:event", {}))["error"]["code"] for _ in range(60)]
    assert codes.count("bad_request") <= 10  # the burst, and what refills meanwhile
    assert codes.count("rate_limited") >= 50
    limited_lines = [
        r for r in caplog.records if r.name == "hub.events" and "rate limited" in r.getMessage()
    ]
    assert len(limited_lines) == 1, [r.getMessage() for r in limited_lines]
    per_event = [
        r
        for r in caplog.records
        if r.name == "hub.events"
        and getattr(r, "outcome", None) == "rate_limited"
        and r is not limited_lines[0]
    ]
    assert per_event == []
