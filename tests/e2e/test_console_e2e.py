"""The web console in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright), against a real hub: chat both ways, live appointment events, a lost
connection that comes back with what it missed, user content shown as text, and the
doctor's consultation panel streaming the assistant. Screenshots of both views go to
``test-artifacts/`` (or ``HUB_TEST_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from channels.appointments import publish_event
from hub.core.protocol import iso
from hub.core.settings import Settings
from hub.server.appkeys import ROUTER, SERVICES
from tests.support.appointments import event
from tests.support.consultations import appointment, assistant_settings
from tests.support.fake_ollama import FakeOllama
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HUB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 10_000
XSS = "<img src=x onerror=alert(1)>"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium from the system (the test set-up installs Debian's package)."""
    async with async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def open_console(
    browser: Browser, hub: HubFixture, user_id: str, role: str, viewport: dict[str, int]
) -> Page:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: page.dialogs.append(dialog.message))  # type: ignore
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore
    base = str(hub.servers[0].make_url("/console/"))
    await page.goto(f"{base}#token={hub.token(user_id, role)}")
    await expect(page.locator("body")).to_have_attribute("data-connection", "connected")
    assert "#token" not in page.url  # taken out of the address bar and history
    return page


async def consoles_of_a_pair(
    browser: Browser, hub: HubFixture, doctor_id: str, patient_id: str
) -> tuple[Page, Page, str]:
    """A doctor's console on a desktop and a patient's on a phone, with their conversation."""
    conversation, _ = await hub.app()[SERVICES].conversations.open({doctor_id, patient_id}, None)
    doctor = await open_console(browser, hub, doctor_id, "doctor", DESKTOP)
    patient = await open_console(browser, hub, patient_id, "patient", PHONE)
    return doctor, patient, conversation.conversation_id


# How far the header's content sticks out of it, and where its last item ends.
HEADER_FITS = """(() => {
  const header = document.querySelector("header.top");
  const right = Math.max(...[...header.children].filter((c) => !c.hidden).map((c) => c.getBoundingClientRect().right));
  return { overflow: header.scrollWidth - header.clientWidth, right };
})()"""


def message(page: Page, text: str):  # noqa: ANN201 (a Playwright locator)
    return page.locator("#messages .body", has_text=text)


async def send(page: Page, text: str) -> None:
    await page.fill("#body", text)
    await page.press("#body", "Enter")


async def screenshot(page: Page, name: str) -> None:
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def test_chat_appointments_reconnect_and_text_only(hub: HubFixture, browser: Browser):
    doctor_id, patient_id = hub.user("dr-web"), hub.user("pat-web")
    services = hub.app()[SERVICES]
    doctor, patient, cid = await consoles_of_a_pair(browser, hub, doctor_id, patient_id)
    await doctor.click(f'[data-conversation="{cid}"]')

    # Both ways, live, with unread counts, typing and read receipts.
    await send(doctor, "Hello from the doctor")
    unread = patient.locator(f'[data-conversation="{cid}"] .badge')
    await expect(unread).to_have_text("1")
    await patient.click(f'[data-conversation="{cid}"]')
    await expect(message(patient, "Hello from the doctor")).to_be_visible()
    await expect(unread).to_have_count(0)
    await expect(doctor.locator("#messages .receipt")).to_have_text(["read"])
    await patient.fill("#body", "Thank")
    await patient.type("#body", "s")
    await expect(doctor.locator("#typing")).to_contain_text(f"{patient_id} is typing")
    await patient.press("#body", "Enter")
    await expect(message(doctor, "Thanks")).to_be_visible()
    # The message the typing line announced has come: the line goes with it (it
    # stayed up to 5 s more).
    await expect(doctor.locator("#typing")).to_have_text("", timeout=1500)

    # An appointment event from a clinic back-end shows up live, with the badge.
    await publish_event(
        services.redis, event("apt-web-1", "confirmed", doctor_id=doctor_id, patient_id=patient_id)
    )
    await expect(patient.locator('[data-appointment="apt-web-1"]')).to_contain_text("confirmed")
    # By name once the directory knows the doctor (the token had none): shown by id.
    await expect(patient.locator('[data-appointment="apt-web-1"]')).to_contain_text(doctor_id)
    await expect(patient.locator("#notification-badge")).to_have_text("1")
    await expect(doctor.locator('[data-appointment="apt-web-1"]')).to_be_visible()

    # Rescheduled: the panel shows the new time, live and after a reload. The reload
    # walked the last notifications newest-first and let the oldest snapshot win.
    moved = datetime.now(UTC).replace(microsecond=0) + timedelta(days=4)
    await publish_event(
        services.redis,
        event(
            "apt-web-1",
            "confirmed",
            doctor_id=doctor_id,
            patient_id=patient_id,
            minutes=1,
            start=moved,
        ),
    )
    slot = patient.locator('[data-appointment="apt-web-1"]')
    await expect(slot).to_have_attribute("data-start", iso(moved))
    await patient.reload()
    await expect(patient.locator("body")).to_have_attribute("data-connection", "connected")
    await expect(slot).to_have_attribute("data-start", iso(moved))
    await patient.click(f'[data-conversation="{cid}"]')

    # The patient's connection drops and stays down while the doctor writes.
    await patient.context.set_offline(True)
    router = hub.app()[ROUTER]
    for sid in [s for s, c in router.connections.items() if c.user_id == patient_id]:
        eio_sid = services.sio.manager.eio_sid_from_sid(sid, "/")
        eio_socket = services.sio.eio.sockets[eio_sid]
        await eio_socket.close(wait=False, abort=True)  # the transport dies, no goodbye
        eio_socket.queue.put_nowait(None)
    await expect(patient.locator("#banner")).to_contain_text("Reconnecting")
    await expect(patient.locator("body")).to_have_attribute("data-connection", "disconnected")
    await send(doctor, "While you were away")
    await send(doctor, XSS)
    await expect(doctor.locator("#messages .message:not(.pending)")).to_have_count(4)
    assert await message(patient, "While you were away").count() == 0
    await patient.context.set_offline(False)
    await expect(patient.locator("body")).to_have_attribute("data-connection", "connected")
    await expect(patient.locator("#banner")).to_be_hidden()
    await expect(message(patient, "While you were away")).to_be_visible()

    # User content is text: the markup shows as its characters, nothing runs.
    await expect(message(patient, "onerror")).to_have_text(XSS)
    assert await patient.locator("#messages img").count() == 0
    for page in (doctor, patient):
        assert page.dialogs == [] and page.errors == []  # type: ignore[attr-defined]

    # Phone-sized: nothing sticks out sideways.
    width = await patient.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    # The header too, down to the narrowest phones in use (320 px).
    await patient.set_viewport_size({"width": 320, "height": 640})
    header = await patient.evaluate(HEADER_FITS)
    assert header["overflow"] <= 0 and header["right"] <= 320, header
    await patient.set_viewport_size(PHONE)
    await screenshot(patient, "console-patient.png")
    await screenshot(doctor, "console-doctor-chat.png")


@pytest.fixture
async def assistant_hub(
    make_hub: MakeHub, settings: Settings, ollama_server: FakeOllama
) -> HubFixture:
    return await make_hub(assistant_settings(settings, ollama_server))


@pytest.fixture
async def ollama_server() -> AsyncIterator[FakeOllama]:
    fake = FakeOllama(
        chunks=["Ask ", "about ", "photophobia ", "and ", "neck ", "stiffness."], chunk_delay=0.05
    )
    await fake.start()
    yield fake
    await fake.close()


async def test_consultation_panel_streams_transcript_and_assistant(
    assistant_hub: HubFixture, browser: Browser, ollama_server: FakeOllama
):
    hub = assistant_hub
    doctor_id, patient_id = hub.user("dr-c"), hub.user("pat-c")
    appointment_id = await appointment(hub, doctor_id, patient_id, status="confirmed")
    doctor = await open_console(browser, hub, doctor_id, "doctor", DESKTOP)
    patient = await open_console(browser, hub, patient_id, "patient", PHONE)
    await doctor.click(f'[data-appointment="{appointment_id}"] button')
    await expect(doctor.locator("#consultation-status")).to_contain_text("open")

    await doctor.click("#simulate")
    await expect(doctor.locator("#transcript li")).to_have_count(3, timeout=WAIT_MS)
    await doctor.click("#simulate")  # stop
    await doctor.fill("#segment-text", f"It hurts {XSS}")
    await doctor.press("#segment-text", "Enter")
    await expect(doctor.locator("#transcript li").last).to_contain_text(XSS)

    await doctor.fill("#question", "What should I ask next?")
    await doctor.press("#question", "Enter")
    answer = doctor.locator("#answers .answer.done .text")
    await expect(answer).to_have_text("Ask about photophobia and neck stiffness.")
    transcript = ollama_server.requests[-1]["messages"][1]["content"]
    assert "It hurts" in transcript and "<img" not in transcript  # data, neutralized

    await doctor.click("#end")
    note = doctor.locator("#note .answer.done")
    await expect(note).to_contain_text("AI draft")
    await expect(note.locator(".text")).to_have_text("Ask about photophobia and neck stiffness.")
    # The patient's page never shows the assistant's words.
    assert await patient.locator("text=photophobia").count() == 0
    assert doctor.errors == [] and doctor.dialogs == []  # type: ignore[attr-defined]
    await screenshot(doctor, "console-doctor-consultation.png")


async def test_console_acks_the_draining_notice(
    hub: HubFixture, browser: Browser, caplog: pytest.LogCaptureFixture
):
    """The console acks ``server:draining``, so a stopping hub does not wait out the
    quarter of its budget it gives a silent client (the console once had no ack)."""
    from hub.server.app import drain

    page = await open_console(browser, hub, hub.user("dr-drain"), "doctor", DESKTOP)
    server = hub.servers[0]
    site = next(iter(server.runner.sites))
    caplog.set_level("INFO", logger="hub.app")
    await drain(server.app, site, timeout=8.0)
    assert "did not ack" not in caplog.text  # a silent client would hold it 8 s / 4
    assert "closing 1 sockets" in caplog.text
    await expect(page.locator("body")).to_have_attribute("data-connection", "disconnected")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_console_is_served_with_a_strict_policy(hub: HubFixture):
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(str(hub.servers[0].make_url("/console/"))) as response:
            assert response.status == 200
            csp = response.headers["Content-Security-Policy"]
            html = await response.text()
        async with session.get(
            str(hub.servers[0].make_url("/console/vendor/hub-client.js"))
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/javascript")
        async with session.get(str(hub.servers[0].make_url("/console/x.py"))) as response:
            assert response.status == 404
        # The policy was built from the request's Host header, which injected directives.
        async with session.get(
            str(hub.servers[0].make_url("/console/")),
            headers={"Host": "x; report-uri https://evil.example/r"},
        ) as response:
            injected = response.headers["Content-Security-Policy"]
    assert injected == csp
    assert "report-uri" not in csp and "evil" not in csp
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.search(r"\s(style|on[a-z]+)=", html)  # no inline style or handler
    for name in ("app.js", "consultation.js", "dom.js"):
        source = (ROOT / "hub" / "server" / "web" / name).read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, name


async def test_a_refused_sign_in_leaves_nobody_signed_in(hub: HubFixture, browser: Browser):
    """After a refused sign-in the header still named the refused user."""
    forged = jwt.encode(
        {"sub": "dr-forged", "role": "doctor", "exp": int(time.time()) + 600},
        "another-key-" * 4,
        "HS256",
    )
    page = await (await browser.new_context(viewport=DESKTOP)).new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{hub.servers[0].make_url('/console/')}#token={forged}")
    await expect(page.locator("#sign-in-error")).to_contain_text("bad signature")
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.locator("#who")).to_have_text("")
    await expect(page.locator("#sign-out")).to_be_hidden()


async def test_attach_a_photo_and_a_pdf_from_the_composer(
    hub: HubFixture, browser: Browser, tmp_path: Path
):
    """The patient picks a photo; the doctor sees its thumbnail inline and opens it in
    the viewer; the doctor's PDF arrives as a download link; a file that is not what
    its name says is refused in the tray."""
    from tests.support.files import pdf, photo

    directory = hub.app()[SERVICES].directory
    await directory.put(hub.user("dr-att"), "Ana Ruiz", "doctor", "MD")
    await directory.put(hub.user("pat-att"), "Jane Roe", "patient", None)
    doctor, patient, cid = await consoles_of_a_pair(
        browser, hub, hub.user("dr-att"), hub.user("pat-att")
    )
    # Names, not ids: the conversation is titled with the other person's name and title.
    await expect(patient.locator(f'[data-conversation="{cid}"]')).to_contain_text("Ana Ruiz, MD")
    await expect(doctor.locator(f'[data-conversation="{cid}"]')).to_contain_text("Jane Roe")
    # And each sees their own name in the header, not their id.
    await expect(patient.locator("#who")).to_have_text("Jane Roe")
    await expect(doctor.locator("#who")).to_have_text("Ana Ruiz")
    await doctor.click(f'[data-conversation="{cid}"]')
    await patient.click(f'[data-conversation="{cid}"]')

    rash = tmp_path / "rash.jpg"
    await asyncio.to_thread(rash.write_bytes, photo(size=(800, 600)))
    await patient.set_input_files("#file-picker", str(rash))
    await expect(patient.locator("#tray .upload")).to_have_attribute("data-state", "released")
    await expect(patient.locator("#tray .upload")).to_contain_text("ready")
    await patient.fill("#body", "It looks like this")
    await patient.press("#body", "Enter")
    await expect(patient.locator("#tray")).to_be_hidden()

    thumb = doctor.locator("#messages img.thumb")
    await expect(thumb).to_be_visible()
    await doctor.wait_for_function(
        "() => { const i = document.querySelector('#messages img.thumb'); "
        "return i && i.complete && i.naturalWidth === 320; }"
    )
    await expect(message(doctor, "It looks like this")).to_be_visible()
    await expect(doctor.locator("#messages .meta").last).to_contain_text("Jane Roe")
    await thumb.click()
    await expect(doctor.locator("#viewer")).to_be_visible()
    await doctor.wait_for_function(
        "() => document.querySelector('#viewer-image').naturalWidth === 800"
    )
    await screenshot(doctor, "console-attachment-viewer.png")
    await doctor.click("#viewer-close")

    labs = tmp_path / "labs.pdf"
    await asyncio.to_thread(labs.write_bytes, pdf())
    await doctor.set_input_files("#file-picker", str(labs))
    await expect(doctor.locator("#tray .upload")).to_have_attribute("data-state", "released")
    await doctor.press("#body", "Enter")  # attachments alone, no text
    link = patient.locator("#messages a.file", has_text="labs.pdf")
    await expect(link).to_be_visible()
    async with patient.expect_download() as downloading:
        await link.click()
    download = await downloading.value
    assert download.suggested_filename == "labs.pdf"
    saved = await download.path()
    assert await asyncio.to_thread(Path(saved).read_bytes) == pdf()

    # A screenshot pasted into the message box is attached too.
    await patient.evaluate(
        """async () => {
            const canvas = document.createElement("canvas");
            canvas.width = 64; canvas.height = 48;
            canvas.getContext("2d").fillRect(0, 0, 64, 48);
            const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
            const data = new DataTransfer();
            data.items.add(new File([blob], "screenshot.png", { type: "image/png" }));
            document.querySelector("#body").dispatchEvent(
                new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
        }"""
    )
    pasted = patient.locator("#tray .upload", has_text="screenshot.png")
    await expect(pasted).to_have_attribute("data-state", "released")
    await patient.press("#body", "Enter")
    await expect(doctor.locator("#messages img.thumb[alt='screenshot.png']")).to_be_visible()

    fake = tmp_path / "holiday.jpg"
    await asyncio.to_thread(fake.write_bytes, pdf())  # a PDF named .jpg
    await patient.set_input_files("#file-picker", str(fake))
    refused = patient.locator("#tray .upload")
    await expect(refused).to_have_attribute("data-state", "rejected")
    await expect(refused).to_contain_text("content is pdf")
    await screenshot(patient, "console-attachment-refused.png")
    assert not doctor.errors and not patient.errors  # type: ignore[attr-defined]


async def test_notify_me_registers_the_service_worker_and_the_subscription(
    make_hub: MakeHub, settings: Settings, browser: Browser
):
    """The switch registers /console/sw.js and sends the subscription to the hub.
    Chromium's own push service is Google's, out of reach here: the page's
    ``pushManager.subscribe`` answers with a subscription of the test's making, the way
    the browser would after asking that service."""
    from dataclasses import replace

    from hub.core.settings import vapid_key_pair
    from storage import names
    from tests.support.fake_push import new_subscription

    private, public = vapid_key_pair()
    hub = await make_hub(
        replace(
            settings,
            push=replace(
                settings.push,
                vapid_private_key=private,
                vapid_public_key=public,
                unchecked_origins=("https://push.example.test",),  # not resolvable here
            ),
        )
    )
    subscription = new_subscription("https://push.example.test").to_json()
    patient_id = hub.user("pat-push")
    context = await browser.new_context(viewport=DESKTOP, permissions=["notifications"])
    await context.add_init_script(
        "PushManager.prototype.subscribe = async function (options) {"
        "  window.__subscribedWith = btoa(String.fromCharCode(...new Uint8Array(options.applicationServerKey)));"
        f"  const json = {json.dumps(subscription)};"
        "  return { endpoint: json.endpoint, toJSON: () => json, unsubscribe: async () => true };"
        "};"
        "PushManager.prototype.getSubscription = async function () { return null; };"
    )
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    base = str(hub.servers[0].make_url("/console/"))
    await page.goto(f"{base}#token={hub.token(patient_id, 'patient')}")
    await expect(page.locator("body")).to_have_attribute("data-connection", "connected")
    await expect(page.locator("#notify-label")).to_be_visible()
    await page.check("#notify")
    await expect(page.locator("body")).to_have_attribute("data-push", "on")
    script = await page.evaluate(
        "async () => { const r = await navigator.serviceWorker.getRegistration('/console/');"
        " const w = r && (r.active || r.waiting || r.installing); return w && w.scriptURL; }"
    )
    assert script is not None and script.endswith("/console/sw.js")
    subscribed_with = await page.evaluate("window.__subscribedWith")
    padded = public + "=" * (-len(public) % 4)
    assert subscribed_with == base64.b64encode(base64.urlsafe_b64decode(padded)).decode()
    db = hub.app()[SERVICES].db
    device = await db[names.PUSH_DEVICES].find_one({"address": subscription["endpoint"]})
    assert device is not None and device["user_id"] == patient_id and device["platform"] == "web"
    assert device["keys"] == subscription["keys"]

    await page.uncheck("#notify")
    await expect(page.locator("body")).to_have_attribute("data-push", "off")
    assert await db[names.PUSH_DEVICES].count_documents({"user_id": patient_id}) == 0
    await context.close()


async def test_a_patient_message_walks_from_the_triage_inbox_to_a_doctor(
    hub: HubFixture, browser: Browser
):
    """The patient writes to the triage pool; a nurse sees it in the inbox by name,
    claims it, writes a staff note and transfers it to a doctor, who answers; the
    patient sees who joined and the answer, never the note."""
    services = hub.app()[SERVICES]
    nurse_id, doctor_id, patient_id = hub.user("rn-web"), hub.user("dr-web"), hub.user("pat-web")
    await services.directory.put(nurse_id, "Rosa Alvarez", "nurse", "RN")
    await services.directory.put(doctor_id, "Maya Chen", "doctor", "MD")
    await services.directory.put(patient_id, "Jane Roe", "patient", None)
    pool = f"triage-{hub.prefix}"
    await services.pools.put(pool, "Nurse triage", [nurse_id], nurse_id, 240)
    note = "Looks like contact dermatitis; doctor to confirm"

    patient = await open_console(browser, hub, patient_id, "patient", PHONE)
    nurse = await open_console(browser, hub, nurse_id, "nurse", DESKTOP)
    doctor = await open_console(browser, hub, doctor_id, "doctor", DESKTOP)
    await patient.fill("#open-with", pool)
    await patient.press("#open-with", "Enter")
    await expect(patient.locator("#conversation-title")).to_have_text("The clinic")
    await send(patient, "My rash is spreading")

    await nurse.click("#inbox-tab")
    item = nurse.locator("#inbox-list .inbox-item")
    await expect(item).to_contain_text("Jane Roe")
    await expect(item).to_contain_text("My rash is spreading")
    await expect(item).to_contain_text("waiting under a minute")
    await screenshot(nurse, "console-inbox.png")
    await item.locator("button.claim").click()
    await expect(patient.locator("#messages")).to_contain_text(
        "Rosa Alvarez, RN joined the conversation."
    )
    await nurse.click('#inbox-states button[data-state="mine"]')
    await item.locator("button", has_text="Open").click()
    await expect(nurse.locator("#conversation-title")).to_have_text("Jane Roe")
    await nurse.check("#as-note")
    await send(nurse, note)
    await expect(nurse.locator("#messages .note")).to_contain_text(note)
    await nurse.uncheck("#as-note")

    await nurse.click("#inbox-tab")
    await nurse.locator("#inbox-list .inbox-item button.transfer").click()
    await nurse.fill("#transfer-to", doctor_id)
    await nurse.fill("#transfer-note", "please see today")
    await nurse.click('#transfer-form button[type="submit"]')
    await expect(patient.locator("#messages")).to_contain_text(
        "Maya Chen, MD joined the conversation."
    )

    conversation = doctor.locator("#conversation-list .item", has_text="Jane Roe")
    await expect(conversation).to_be_visible()
    await conversation.click()
    await expect(doctor.locator("#messages .note")).to_contain_text(note)
    await send(doctor, "Please send a photo of the rash")
    await expect(message(patient, "Please send a photo of the rash")).to_be_visible()
    await expect(patient.locator("body")).not_to_contain_text(note)
    await expect(patient.locator("body")).not_to_contain_text("please see today")
    assert not (patient.errors or nurse.errors or doctor.errors)  # type: ignore[attr-defined]


async def test_a_doctor_edits_and_retracts_and_a_patient_downloads_the_record(
    hub: HubFixture, browser: Browser
):
    doctor_id, patient_id = hub.user("dr-edit"), hub.user("pat-edit")
    doctor, patient, cid = await consoles_of_a_pair(browser, hub, doctor_id, patient_id)
    await doctor.click(f'[data-conversation="{cid}"]')
    await patient.click(f'[data-conversation="{cid}"]')
    await send(doctor, "Take 50 mg twice a day")
    await expect(message(patient, "Take 50 mg twice a day")).to_be_visible()

    answers = iter(["Take 5 mg twice a day", "sent too soon"])
    doctor.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept(next(answers))))
    mine = doctor.locator("#messages li.mine", has_text="Take 50 mg")
    await mine.locator('button[data-action="edit"]').click()
    await expect(message(patient, "Take 5 mg twice a day")).to_be_visible()
    await expect(patient.locator("#messages .meta", has_text="edited")).to_have_count(1)
    await send(doctor, "Your biopsy came back clear")
    await expect(message(patient, "Your biopsy came back clear")).to_be_visible()
    wrong = doctor.locator("#messages li.mine", has_text="biopsy")
    await wrong.locator('button[data-action="retract"]').click()
    await expect(patient.locator("#messages .withdrawn")).to_have_text("Message retracted")
    await expect(patient.locator("#messages")).not_to_contain_text("biopsy")

    # The patient's own record, as a PDF and a FHIR bundle, from the header.
    assert await doctor.locator("#export-button").is_hidden()
    await patient.click("#export-button")
    pdf_link = patient.locator("#export-links a", has_text="PDF")
    await expect(pdf_link).to_be_visible(timeout=30_000)
    href = await pdf_link.get_attribute("href")
    assert href is not None
    local = str(hub.servers[0].make_url(href[href.index("/api/") :]))
    response = await patient.request.get(local)
    assert response.status == 200 and (await response.body()).startswith(b"%PDF-")
    assert not (patient.errors or doctor.errors)  # type: ignore[attr-defined]


async def test_the_console_signs_out_when_idle_and_when_the_clinic_ends_the_session(
    make_hub: MakeHub, settings: Settings, browser: Browser
):
    """A console left open stayed signed in for as long as its token lasted, and a
    person the clinic cut off kept seeing their conversations."""
    from dataclasses import replace

    impatient = await make_hub(replace(settings, console_idle=3.0))
    idle = await open_console(browser, impatient, impatient.user("idle"), "doctor", DESKTOP)
    await expect(idle.locator("#sign-in-error")).to_contain_text("without activity")
    await expect(idle.locator("#sign-in")).to_be_visible()
    await expect(idle.locator("#main")).to_be_hidden()

    hub = await make_hub()  # the default idle time: only the revocation signs it out
    busy_id = hub.user("busy")
    busy = await open_console(browser, hub, busy_id, "doctor", DESKTOP)
    status = await revoke(hub, busy_id)
    assert status == 200
    await expect(busy.locator("#sign-in-error")).to_have_text(
        "Your session was ended by the clinic."
    )
    await expect(busy.locator("#main")).to_be_hidden()
    assert not busy.errors and not idle.errors  # type: ignore[attr-defined]
    # Signed out is wiped: nothing of either person is left in the browser's storage.
    for page in (idle, busy):
        assert await storage_until(page, lambda kept: kept == {}) == {}


async def revoke(hub: HubFixture, user_id: str) -> int:
    admin = hub.token(hub.user("admin"), "admin")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.post(
            hub.servers[0].make_url(f"/api/v1/users/{user_id}/revoke"),
            headers={"Authorization": f"Bearer {admin}"},
        ) as response,
    ):
        return response.status


# What the console keeps in IndexedDB (the SDK's IndexedDBStorage), key by key.
READ_STORAGE = """async () => {
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open("hub-console", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("state");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const table = db.transaction("state").objectStore("state");
  const [keys, values] = await Promise.all([table.getAllKeys(), table.getAll()].map(
    (request) => new Promise((resolve) => { request.onsuccess = () => resolve(request.result); })));
  db.close();
  return Object.fromEntries(keys.map((key, i) => [key, values[i]]));
}"""
SOCKET_IO = re.compile(r".*/socket\.io/.*")


async def storage_until(page: Page, check: Any) -> dict[str, Any]:
    """The console's IndexedDB once ``check`` holds of it (read every 50 ms, for at
    most the page's wait): page.wait_for_function does not await an async check."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not check(kept := await page.evaluate(READ_STORAGE)):
        assert time.monotonic() < deadline, f"storage never matched: {kept}"
        await page.wait_for_timeout(50)
    return dict(kept)


async def cut_off(page: Page, hub: HubFixture, user_id: str) -> None:
    """The page can no longer reach the hub's socket; the hub drops the one it had."""
    await page.context.route(SOCKET_IO, lambda route: route.abort())
    services, router = hub.app()[SERVICES], hub.app()[ROUTER]
    for sid in [s for s, c in router.connections.items() if c.user_id == user_id]:
        eio_socket = services.sio.eio.sockets[services.sio.manager.eio_sid_from_sid(sid, "/")]
        await eio_socket.close(wait=False, abort=True)
        eio_socket.queue.put_nowait(None)
    await expect(page.locator("body")).to_have_attribute("data-connection", "disconnected")


async def test_a_reload_with_unsent_messages_sends_them_once(hub: HubFixture, browser: Browser):
    """Messages written while the hub was out of reach wait in IndexedDB; a reload
    shows them as sending and, once the hub is back, they are stored once each."""
    doctor_id, patient_id = hub.user("dr-reload"), hub.user("pat-reload")
    conversation, _ = await hub.app()[SERVICES].conversations.open({doctor_id, patient_id}, None)
    cid = conversation.conversation_id
    page = await open_console(browser, hub, patient_id, "patient", PHONE)
    await page.click(f'[data-conversation="{cid}"]')
    await cut_off(page, hub, patient_id)
    for text in ("first, offline", "second, offline"):
        await send(page, text)
    await expect(page.locator("#messages .pending")).to_have_count(2)
    # Written a moment after it shows (the SDK's persisted()): wait for the commit.
    stored = await storage_until(page, lambda kept: len(kept.get("outbox", [])) == 2)
    assert [m["body"] for m in stored["outbox"]] == ["first, offline", "second, offline"]

    await page.reload()  # the socket is still cut: the page comes from storage first
    await page.click(f'[data-conversation="{cid}"]')
    await expect(page.locator("#messages .pending")).to_have_count(2)
    await page.context.unroute(SOCKET_IO)
    await expect(page.locator("body")).to_have_attribute("data-connection", "connected")
    await expect(page.locator("#messages .pending")).to_have_count(0)
    await expect(message(page, "second, offline")).to_be_visible()

    doctor = await hub.connect(doctor_id, "doctor")
    page_of_sync = await doctor.call("sync", {"cursors": {cid: 0}})
    assert [m["body"] for m in page_of_sync["messages"]] == ["first, offline", "second, offline"]
    assert (await page.evaluate(READ_STORAGE))["outbox"] == []
    assert page.errors == []  # type: ignore[attr-defined]
