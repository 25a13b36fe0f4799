"""Attachments against real servers: SecantusDB's GridFS, Debian's clamd, Pillow.

Upload, scan, release, attach, download by a member; refusals for strangers, forged
or expired links and other conversations' ids; metadata stripped; spoofed types,
polyglots, bombs and truncated files refused; a scanner that is down."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image

from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.attachments import download, http_session, upload, uploaded
from tests.support.chat import code, open_pair, send_with
from tests.support.clamd import EICAR, SIGNATURE, Clamd
from tests.support.files import (
    CAMERA_SERIAL,
    GPS_IFD,
    pdf,
    pdf_with_object_stream,
    photo,
    png_declaring,
)
from tests.support.hubs import (
    JWT_SECRET,
    TIMEOUT,
    HubFixture,
    MakeHub,
    start_hub_process,
)


def scanned(settings: Settings, clamd: Clamd, **changes: Any) -> Settings:
    return replace(
        settings,
        attachments=replace(settings.attachments, clamd_url=clamd.tcp_url, **changes),
    )


async def test_photo_is_scanned_stripped_sent_and_downloaded_by_members_only(
    make_hub: MakeHub, settings: Settings, clamd_server: Clamd
):
    hub = await make_hub(scanned(settings, clamd_server))
    doctor, patient, conversation_id = await open_pair(hub)
    original = photo(orientation=6)  # taken with the phone on its side
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)  # there before

    attachment = await uploaded(hub, patient, conversation_id, original, "IMG_0042.jpg")
    assert attachment["state"] == "released", attachment
    assert attachment["type"] == "image/jpeg" and attachment["name"] == "IMG_0042.jpg"
    # Oriented as the camera said, then the orientation tag dropped with the rest.
    assert (attachment["width"], attachment["height"]) == (900, 1200)
    pushed = await patient.wait_for(
        "attachment:updated", lambda d: d["attachment"]["id"] == attachment["id"]
    )
    assert pushed["attachment"]["state"] == "released"

    ack = await send_with(patient, conversation_id, [attachment["id"]])
    assert ack["ok"], ack
    summary = ack["message"]["attachments"][0]
    assert summary == {
        "id": attachment["id"],
        "name": "IMG_0042.jpg",
        "type": "image/jpeg",
        "size": attachment["size"],
        "width": 900,
        "height": 1200,
        "thumbnail": f"/api/v1/attachments/{attachment['id']}/thumbnail",
    }
    new = await doctor.wait_for(
        "message:new", lambda d: d["message"]["seq"] == ack["message"]["seq"]
    )
    assert new["message"]["attachments"] == [summary] and new["message"]["body"] == ""
    history = await doctor.call("message:history", {"conversation_id": conversation_id})
    assert history["messages"][-1]["attachments"] == [summary]
    synced = await doctor.call("sync", {"cursors": {conversation_id: 0}})
    assert synced["messages"][-1]["attachments"] == [summary]

    status, headers, body = await download(
        hub, f"/api/v1/attachments/{attachment['id']}", doctor.token
    )
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert headers["content-disposition"].startswith("inline;")
    stored = Image.open(io.BytesIO(body))
    exif = stored.getexif()
    assert not exif.get_ifd(GPS_IFD) and CAMERA_SERIAL not in exif and len(exif) == 0
    assert stored.size == (900, 1200)

    status, _, thumb = await download(hub, summary["thumbnail"], doctor.token)
    assert status == 200 and max(Image.open(io.BytesIO(thumb)).size) == 320

    stranger = await hub.connect(hub.user("stranger"), "patient")
    for path in (f"/api/v1/attachments/{attachment['id']}", summary["thumbnail"]):
        status, _, _ = await download(hub, path, stranger.token)
        assert status == 404
    assert code(await stranger.call("attachment:url", {"id": attachment["id"]})) == "not_found"


async def test_signed_links_load_without_a_token_until_they_expire(
    make_hub: MakeHub, settings: Settings
):
    hub = await make_hub()
    doctor, patient, conversation_id = await open_pair(hub)
    attachment = await uploaded(hub, doctor, conversation_id, photo(), "wound.jpg")
    assert (await send_with(doctor, conversation_id, [attachment["id"]]))["ok"]
    link = await patient.call("attachment:url", {"id": attachment["id"], "thumbnail": True})
    assert link["ok"], link
    assert link["url"].endswith(link["path"]) and link["expires_at"].endswith("Z")
    status, headers, body = await download(hub, link["path"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and body

    # Nobody's id in the URL (proxies log URLs); another person's sealed name, swapped
    # in, breaks the signature.
    assert patient.user_id not in link["path"] and "user=" not in link["path"]
    theirs = await doctor.call("attachment:url", {"id": attachment["id"], "thumbnail": True})

    def sealed(path: str) -> str:
        return path.split("for=", 1)[1].split("&", 1)[0]

    forged = link["path"].replace(sealed(link["path"]), sealed(theirs["path"]))
    assert forged != link["path"] and (await download(hub, forged))[0] == 401
    tampered = link["path"][:-3] + ("AAA" if not link["path"].endswith("AAA") else "BBB")
    assert (await download(hub, tampered))[0] == 401
    other = link["path"].replace("/thumbnail?", "?")  # the full file with a thumbnail's link
    assert (await download(hub, other))[0] == 401
    assert (await download(hub, f"/api/v1/attachments/{attachment['id']}"))[0] == 401

    short = await make_hub(
        replace(settings, attachments=replace(settings.attachments, url_ttl=0.001))
    )
    expiring = await short.connect(patient.user_id, "patient")
    expired = await expiring.call("attachment:url", {"id": attachment["id"]})
    status, _, body = await download(short, expired["path"])
    assert status == 401 and b"expired" in body


async def test_only_the_uploader_sends_an_attachment_and_only_in_its_conversation(
    hub: HubFixture,
):
    doctor, patient, conversation_id = await open_pair(hub)
    other = await doctor.call("conversation:open", {"member_ids": [hub.user("other-patient")]})
    other_id = other["conversation"]["id"]
    attachment = await uploaded(hub, doctor, conversation_id, pdf(), "labs.pdf")
    assert attachment["state"] == "released" and attachment["type"] == "application/pdf"

    assert code(await send_with(doctor, other_id, [attachment["id"]])) == "not_found"
    assert code(await send_with(patient, conversation_id, [attachment["id"]])) == "forbidden"
    assert code(await send_with(doctor, conversation_id, ["no-such-id"])) == "not_found"
    too_many = [attachment["id"]] * 2
    assert code(await send_with(doctor, conversation_id, too_many)) == "bad_request"
    blank = await doctor.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "c1", "body": " "}
    )
    assert code(blank) == "bad_request"

    client_id = uuid.uuid4().hex
    payload = {
        "conversation_id": conversation_id,
        "client_id": client_id,
        "body": "Your results",
        "attachment_ids": [attachment["id"]],
    }
    first = await doctor.call("message:send", payload)
    again = await doctor.call("message:send", payload)  # a resend after a lost ack
    assert first["ok"] and again["ok"] and again["message"]["seq"] == first["message"]["seq"]
    assert code(await send_with(doctor, conversation_id, [attachment["id"]])) == "conflict"

    status, headers, body = await download(
        hub, f"/api/v1/attachments/{attachment['id']}", patient.token
    )
    assert status == 200 and body == pdf()
    assert headers["content-disposition"] == (
        "attachment; filename=\"labs.pdf\"; filename*=UTF-8''labs.pdf"
    )


async def test_range_requests_serve_parts_of_a_file(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    content = pdf(padding=600_000)  # bigger than one GridFS chunk
    attachment = await uploaded(hub, doctor, conversation_id, content, "scan.pdf")
    path = f"/api/v1/attachments/{attachment['id']}"
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=300000-300099": (300_000, 300_100),  # across the first chunk's end
        f"bytes=-{len(content) - 261_100}": (261_100, len(content)),
        "bytes=500000-": (500_000, len(content)),
    }
    for wanted, (start, end) in cases.items():
        status, headers, body = await download(hub, path, doctor.token, {"Range": wanted})
        assert status == 206, wanted
        assert body == content[start:end], wanted
        assert headers["content-range"] == f"bytes {start}-{end - 1}/{len(content)}"
    status, headers, _ = await download(
        hub, path, doctor.token, {"Range": f"bytes={len(content)}-"}
    )
    assert status == 416 and headers["content-range"] == f"bytes */{len(content)}"
    status, headers, body = await download(hub, path, doctor.token)
    assert status == 200 and body == content and headers["accept-ranges"] == "bytes"
    status, _, _ = await download(hub, path, doctor.token, {"If-None-Match": headers["etag"]})
    assert status == 304


async def test_a_large_file_is_served_a_few_chunks_at_a_time(hub: HubFixture):
    """PyMongo's GridFS reader fetched a 20 MB file whole (its cursor's first batch is
    101 chunks) for every download."""
    doctor, patient, conversation_id = await open_pair(hub)
    content = pdf(padding=8 * 1024 * 1024)
    attachment = await uploaded(hub, doctor, conversation_id, content, "scan.pdf")
    url = hub.servers[0].make_url(f"/api/v1/attachments/{attachment['id']}")
    received = 0
    tracemalloc.start()
    try:
        async with http_session() as http:
            headers = {"Authorization": f"Bearer {doctor.token}"}
            async with http.get(url, headers=headers) as response:
                assert response.status == 200
                async for piece in response.content.iter_chunked(64 * 1024):
                    received += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == len(content)
    assert peak < 3 * 1024 * 1024, peak


async def test_malware_is_rejected_its_bytes_deleted_and_audited(
    make_hub: MakeHub, settings: Settings, clamd_server: Clamd
):
    hub = await make_hub(scanned(settings, clamd_server))
    doctor, patient, conversation_id = await open_pair(hub)
    infected = pdf() + EICAR  # after %%EOF, as appended payloads are
    attachment = await uploaded(hub, patient, conversation_id, infected, "invoice.pdf")
    assert attachment["state"] == "rejected"
    assert attachment["reason"] == "the file failed the malware scan"
    db = hub.app()[SERVICES].db
    record = await db[names.ATTACHMENTS].find_one({"_id": attachment["id"]})
    assert "file_id" not in record
    assert await db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}) == 0
    assert await db[f"{names.ATTACHMENT_FILES}.files"].count_documents({}) == 0
    audit = await db[names.AUDIT].find_one({"attachment_id": attachment["id"]})
    assert audit["action"] == "attachment.rejected" and audit["detail"]["signature"].startswith(
        SIGNATURE
    )
    assert code(await send_with(patient, conversation_id, [attachment["id"]])) == "conflict"
    status, _, _ = await download(hub, f"/api/v1/attachments/{attachment['id']}", doctor.token)
    assert status == 404


async def test_spoofed_types_and_polyglots_are_refused_and_nothing_is_kept(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    refused = {
        "a PDF named .jpg": (pdf(), "photo.jpg"),
        "a script named .pdf": (b"#!/bin/sh\nrm -rf ~\n" + b"#" * 100, "report.pdf"),
        "HTML named .png": (b"<html><script>alert(1)</script></html>" + b" " * 64, "x.png"),
        "a PDF that is also HTML": (pdf() + b"<html><script>fetch('/')</script>", "a.pdf"),
        "a PDF with JavaScript": (
            pdf().replace(
                b"/Type /Catalog",
                b"/Type /Catalog /OpenAction << /S /JavaScript /JS (app.alert(1)) >>",
            ),
            "a.pdf",
        ),
        "a JPEG carrying a ZIP": (
            photo() + b"PK\x03\x04" + b"\0" * 40 + b"PK\x05\x06" + b"\0" * 18,
            "a.jpg",
        ),
        "a JPEG carrying a PDF": (photo() + pdf(), "a.jpg"),
        "a GIF (not allowed)": (b"GIF89a" + b"\0" * 100, "a.gif"),
        "an executable named .pdf": (b"MZ\x90\x00" + b"\0" * 100, "a.pdf"),
    }
    for what, (data, name) in refused.items():
        status, answer = await upload(
            hub, patient, conversation_id, data, name, content_type="image/jpeg"
        )
        assert status == 415, what
        assert answer["error"]["code"] == "unsupported_type", what
        assert answer["error"]["message"], what
    empty_status, empty = await upload(hub, patient, conversation_id, b"", "a.jpg")
    assert empty_status == 400 and empty["error"]["code"] == "bad_request"
    db = hub.app()[SERVICES].db
    assert await db[names.ATTACHMENTS].count_documents({}) == 0
    assert await db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}) == 0
    # A name without an extension gets the right one; the client's Content-Type is ignored.
    attachment = await uploaded(hub, patient, conversation_id, pdf(), "results 2026.11")
    assert attachment["name"] == "results 2026.11.pdf" and attachment["type"] == "application/pdf"


async def test_bombs_and_damaged_images_are_rejected_and_the_hub_goes_on(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    cases = {
        "bomb.png": (png_declaring(100_000, 100_000), "at most"),
        "strip.png": (png_declaring(60_000, 1), "a side"),
        "cut.jpg": (photo()[:5000], "damaged or truncated"),
    }
    for name, (data, reason) in cases.items():
        attachment = await uploaded(hub, patient, conversation_id, data, name)
        assert attachment["state"] == "rejected", name
        assert reason in attachment["reason"], (name, attachment["reason"])
    fine = await uploaded(hub, patient, conversation_id, photo(kind="PNG", size=(40, 30)), "ok.png")
    assert fine["state"] == "released" and fine["type"] == "image/png"
    assert (await send_with(patient, conversation_id, [fine["id"]], "after the bombs"))["ok"]


async def test_pdf_scripts_hidden_from_a_byte_search_are_found_by_parsing(hub: HubFixture):
    """An ``/OpenAction`` running JavaScript from a compressed object stream was
    released, and ``/J#61vaScript`` was caught only by clamd's heuristics."""
    doctor, patient, conversation_id = await open_pair(hub)
    hidden = {
        "in an object stream": pdf_with_object_stream(
            b"/OpenAction 5 0 R", b"<< /S /JavaScript /JS (app.alert(1)) >>"
        ),
        "with #-escaped names": pdf().replace(
            b"/Type /Catalog",
            b"/Type /Catalog /OpenAction << /S /J#61vaScript /J#53 (app.alert(1)) >>",
        ),
        "an embedded file, compressed": pdf_with_object_stream(
            b"/Names 5 0 R", b"<< /EmbeddedFiles << /Names [] >> >>"
        ),
    }
    for what, data in hidden.items():
        attachment = await uploaded(hub, patient, conversation_id, data, "results.pdf")
        assert attachment["state"] == "rejected", what
        assert "active content" in attachment["reason"], (what, attachment["reason"])
    clean = await uploaded(hub, patient, conversation_id, pdf_with_object_stream(b""), "ok.pdf")
    assert clean["state"] == "released" and clean["type"] == "application/pdf", clean


async def test_heic_photos_are_stored_as_jpeg_without_their_metadata(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    attachment = await uploaded(
        hub, patient, conversation_id, photo(kind="HEIF", size=(640, 480)), "IMG_7.HEIC"
    )
    assert attachment["state"] == "released", attachment
    assert attachment["name"] == "IMG_7.jpg" and attachment["type"] == "image/jpeg"
    status, _, body = await download(hub, f"/api/v1/attachments/{attachment['id']}", patient.token)
    image = Image.open(io.BytesIO(body))
    assert status == 200 and image.format == "JPEG" and image.size == (640, 480)
    assert len(image.getexif()) == 0


async def test_a_scanner_that_is_down_keeps_uploads_pending_until_it_is_back(
    make_hub: MakeHub, settings: Settings, tmp_path
):
    from hub.server import embedded
    from tests.support.clamd import start_clamd

    port = embedded.free_port()
    hub = await make_hub(
        replace(
            settings,
            attachments=replace(
                settings.attachments,
                clamd_url=f"tcp://127.0.0.1:{port}",
                clamd_timeout=2.0,
                retry_after=0.5,
            ),
        )
    )
    doctor, patient, conversation_id = await open_pair(hub)
    attachment = await uploaded(hub, patient, conversation_id, pdf(), "referral.pdf")
    assert attachment["state"] == "pending"
    assert code(await send_with(patient, conversation_id, [attachment["id"]])) == "conflict"
    status, _, _ = await download(hub, f"/api/v1/attachments/{attachment['id']}", patient.token)
    assert status == 409

    clamd = start_clamd(tmp_path / "clamd", port=port)
    try:
        released = await patient.wait_for(
            "attachment:updated",
            lambda d: d["attachment"]["id"] == attachment["id"],
            timeout=20,
        )
    finally:
        clamd.stop()
    assert released["attachment"]["state"] == "released"
    assert (await send_with(patient, conversation_id, [attachment["id"]]))["ok"]


async def test_the_sweep_deletes_orphans_and_keeps_what_messages_carry(
    make_hub: MakeHub, settings: Settings
):
    hub = await make_hub(
        replace(settings, attachments=replace(settings.attachments, orphan_after=0.001))
    )
    doctor, patient, conversation_id = await open_pair(hub)
    kept = await uploaded(hub, patient, conversation_id, photo(size=(64, 48)), "kept.jpg")
    orphan = await uploaded(hub, patient, conversation_id, photo(size=(64, 48)), "orphan.jpg")
    assert (await send_with(patient, conversation_id, [kept["id"]]))["ok"]
    attachments = hub.app()[SERVICES].attachments
    assert await attachments.sweep() == 1
    db = hub.app()[SERVICES].db
    assert await db[names.ATTACHMENTS].find_one({"_id": orphan["id"]}) is None
    assert (await download(hub, f"/api/v1/attachments/{kept['id']}", doctor.token))[0] == 200
    files = await db[f"{names.ATTACHMENT_FILES}.files"].count_documents({})
    assert files == 2  # the kept image and its thumbnail


async def test_an_oversized_upload_is_cut_off_at_the_limit_without_being_buffered(
    make_hub: MakeHub, settings: Settings
):
    """50 MB sent without a length against a 4 MB limit: refused once the limit is
    passed, nothing kept, and the hub's memory never held the file."""
    limit = 4 * 1024 * 1024
    hub = await make_hub(
        replace(settings, attachments=replace(settings.attachments, max_bytes=limit))
    )
    doctor, patient, conversation_id = await open_pair(hub)
    block = pdf() + b" " * (64 * 1024 - len(pdf()))
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(800):  # 50 MiB, in 64 KiB pieces of one reused buffer
            sent += len(block)
            yield block

    tracemalloc.start()
    try:
        status, answer = await upload(hub, patient, conversation_id, body(), "big.pdf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413 and answer["error"]["code"] == "too_large"
    # Chunks in flight (the client's, aiohttp's, GridFS's), never the 4 MiB the hub took
    # in before it refused (PyMongo's GridIn held all of it: it batches chunks to 48 MB).
    assert sent > limit and peak < limit, peak
    db = hub.app()[SERVICES].db
    assert await db[names.ATTACHMENTS].count_documents({}) == 0
    assert await db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}) == 0

    # With its length declared, the upload is refused before a byte is read.
    status, answer = await upload(hub, patient, conversation_id, io.BytesIO(block * 70), "big.pdf")
    assert status == 413 and answer["error"]["code"] == "too_large"


async def test_without_a_scanner_a_production_hub_refuses_uploads(
    make_hub: MakeHub, settings: Settings, caplog
):
    hub = await make_hub(replace(settings, embedded=False))
    doctor, patient, conversation_id = await open_pair(hub)
    status, answer = await upload(hub, patient, conversation_id, pdf(), "a.pdf")
    assert status == 503 and answer["error"]["code"] == "unavailable"
    assert "no malware scanner" in answer["error"]["message"]
    assert any("HUB_ATTACHMENTS_UNSCANNED" in r.getMessage() for r in caplog.records)

    unscanned = await make_hub(
        replace(
            settings,
            embedded=False,
            attachments=replace(settings.attachments, unscanned=True),
        )
    )
    doctor, patient, conversation_id = await open_pair(unscanned)
    assert (await uploaded(unscanned, patient, conversation_id, pdf(), "a.pdf"))["state"] == (
        "released"
    )


async def test_file_names_and_contents_never_reach_the_logs(
    make_hub: MakeHub, settings: Settings, clamd_server: Clamd, caplog
):
    # As `hub serve` sets it (hub/core/logs.py): PyMongo's command log carries documents.
    caplog.set_level(logging.WARNING, logger="pymongo")
    caplog.set_level(logging.DEBUG)  # last: it sets the capturing handler's level too
    # aiohttp's access log stays on: the URLs a proxy logs carry no file name either.
    hub = await make_hub(scanned(settings, clamd_server))
    doctor, patient, conversation_id = await open_pair(hub)
    secret_name = "HIV-results-Jane-Roe"
    attachment = await uploaded(
        hub, patient, conversation_id, pdf("Jane Roe HIV"), f"{secret_name}.pdf"
    )
    await uploaded(hub, patient, conversation_id, pdf() + EICAR, f"{secret_name}-2.pdf")
    assert (await send_with(patient, conversation_id, [attachment["id"]]))["ok"]
    await download(hub, f"/api/v1/attachments/{attachment['id']}", doctor.token)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert attachment["id"] in text  # the ids are there, for operators
    assert secret_name not in text and "Jane Roe" not in text


async def test_clamd_answers_over_its_unix_socket_too(clamd_server: Clamd):
    from hub.attachments.scanner import Clamd as ClamdClient

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        yield data[:10]
        yield data[10:]

    scanner = ClamdClient(clamd_server.unix_url, timeout=10)
    await scanner.ping()
    assert (await scanner.scan(chunks(pdf()))).clean
    verdict = await scanner.scan(chunks(b"header " + EICAR + b" trailer"))
    assert not verdict.clean and verdict.signature and verdict.signature.startswith(SIGNATURE)


@pytest.mark.fault
async def test_a_hub_killed_mid_upload_leaves_nothing_half_visible(
    make_hub: MakeHub, settings: Settings
):
    port = embedded.free_port()
    env = {
        **os.environ,
        "HUB_PORT": str(port),
        "HUB_EMBEDDED": "0",
        "HUB_ATTACHMENTS_UNSCANNED": "1",
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_REDIS_URL": settings.redis_url or "",
        "HUB_MONGODB_DB": settings.mongodb_db,
        "HUB_JWT_SECRET": JWT_SECRET,
    }
    process, _ = await start_hub_process(env, timeout=60)
    hub = await make_hub()  # the same database: what the other hubs see afterwards
    doctor, patient, conversation_id = await open_pair(hub)
    db = hub.app()[SERVICES].db
    half = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield pdf()
        for _ in range(20):
            yield b" " * 256 * 1024
        half.set()
        await asyncio.Event().wait()  # the rest never comes

    async def post() -> None:
        async with http_session() as http:
            await http.post(
                f"http://127.0.0.1:{port}/api/v1/conversations/{conversation_id}/attachments",
                data=body(),
                headers={"Authorization": f"Bearer {patient.token}"},
            )

    upload_task = asyncio.create_task(post())
    try:
        await asyncio.wait_for(half.wait(), TIMEOUT)
        await until_async(
            lambda: db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}),
            lambda chunks: chunks >= 10,
        )
        process.kill()
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        upload_task.cancel()
        with contextlib.suppress(BaseException):
            await upload_task
    record = await db[names.ATTACHMENTS].find_one({})
    assert record["state"] == "uploading"
    assert await db[f"{names.ATTACHMENT_FILES}.files"].count_documents({}) == 0
    status, _, _ = await download(hub, f"/api/v1/attachments/{record['_id']}", doctor.token)
    assert status == 404
    assert code(await send_with(patient, conversation_id, [record["_id"]])) == "conflict"
    attachments = hub.app()[SERVICES].attachments
    assert await attachments.sweep() == 0  # not yet: an upload may take a while
    assert await attachments.sweep(cut_off_after=timedelta(0)) == 1
    assert await db[names.ATTACHMENTS].count_documents({}) == 0
    assert await db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}) == 0


async def until_async(read, holds, timeout: float = TIMEOUT):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if holds(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, value
        await asyncio.sleep(0.05)


async def test_a_client_gone_midway_leaves_nothing_and_no_error(hub: HubFixture, caplog):
    """A phone that loses its network mid-upload: nothing kept, nothing logged as a
    fault of the hub, and the hub serves the next upload."""
    doctor, patient, conversation_id = await open_pair(hub)
    path = f"/api/v1/conversations/{conversation_id}/attachments"
    port = hub.servers[0].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {patient.token}\r\nContent-Length: 5000000\r\n\r\n"
    ).encode()
    writer.write(head + pdf() + b" " * 600_000)
    await writer.drain()
    db = hub.app()[SERVICES].db
    await until_async(
        lambda: db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}),
        lambda chunks: chunks >= 2,
    )
    writer.close()
    await until_async(lambda: db[names.ATTACHMENTS].count_documents({}), lambda n: n == 0)
    await until_async(
        lambda: db[f"{names.ATTACHMENT_FILES}.chunks"].count_documents({}), lambda n: n == 0
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await uploaded(hub, patient, conversation_id, pdf(), "next.pdf"))["state"] == (
        "released"
    )


async def test_an_unsent_upload_is_the_uploaders_alone_until_it_is_sent(hub: HubFixture):
    """Another member of the conversation could download an upload its uploader had
    not sent (a wrong photo picked, about to be withdrawn)."""
    doctor, patient, conversation_id = await open_pair(hub)
    unsent = await uploaded(hub, doctor, conversation_id, photo(), "wound.jpg")
    path = f"/api/v1/attachments/{unsent['id']}"
    assert (await download(hub, path, patient.token))[0] == 404
    assert code(await patient.call("attachment:url", {"id": unsent["id"]})) == "not_found"
    assert (await download(hub, path, doctor.token))[0] == 200  # the uploader's preview

    # Sent, it is every member's; and no longer withdrawn by a delete.
    assert (await send_with(doctor, conversation_id, [unsent["id"]], "your wound"))["ok"]
    assert (await download(hub, path, patient.token))[0] == 200
    assert (await delete(hub, path, doctor.token))[0] == 409

    # Withdrawn before it is sent: record and bytes go; nobody else may withdraw it.
    wrong = await uploaded(hub, doctor, conversation_id, photo(kind="PNG"), "other.png")
    wrong_path = f"/api/v1/attachments/{wrong['id']}"
    assert (await delete(hub, wrong_path, patient.token))[0] == 404
    assert (await delete(hub, wrong_path, doctor.token))[0] == 200
    assert (await download(hub, wrong_path, doctor.token))[0] == 404
    db = hub.app()[SERVICES].db
    record = await db[names.ATTACHMENTS].find_one({"_id": wrong["id"]})
    assert record is None
    files = db[f"{names.ATTACHMENT_FILES}.files"]
    assert await files.count_documents({"filename": {"$regex": f"^{wrong['id']}"}}) == 0


async def test_a_daily_upload_quota_per_person(make_hub: MakeHub, settings: Settings):
    first = photo()
    hub = await make_hub(
        replace(
            settings,
            attachments=replace(settings.attachments, daily_bytes=len(first) + 100),
        )
    )
    doctor, patient, conversation_id = await open_pair(hub)
    assert (await uploaded(hub, patient, conversation_id, first, "a.jpg"))["state"] == "released"
    status, answer = await upload(hub, patient, conversation_id, photo(kind="PNG"), "b.png")
    assert status == 429 and answer["error"]["code"] == "rate_limited", answer
    assert "quota" in answer["error"]["message"]
    db = hub.app()[SERVICES].db
    assert await db[names.ATTACHMENTS].count_documents({"uploader_id": patient.user_id}) == 1
    # Another person's quota is their own.
    assert (await uploaded(hub, doctor, conversation_id, first, "a.jpg"))["state"] == "released"


async def delete(hub: HubFixture, path: str, token: str) -> tuple[int, Any]:
    async with (
        http_session() as http,
        http.delete(
            hub.servers[0].make_url(path), headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json()
