"""Attachments over HTTP: the upload, the download and its thumbnail.

Uploads stream: the body is read in chunks and written to GridFS as it comes, so
the request size limit of the other routes (``HUB_MAX_FRAME_BYTES``) does not apply
here; ``HUB_ATTACHMENT_MAX_BYTES`` does, and a body over it is cut off. Downloads
are served only by the hub, to members, with headers that keep a browser from
running anything in them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import ClientPayloadError, web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from hub.attachments.attachments import download_path
from hub.core.errors import BadRequest
from hub.core.protocol import ID_PATTERN
from hub.server.tenancy import link_clinic, person_of

log = logging.getLogger("hub.http")

UPLOAD_READ_BYTES = 256 * 1024
# No scripts, no plugins, no frames, no forms: a file opened in a tab is inert.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


async def upload(request: web.Request) -> web.Response:
    """POST /api/v1/conversations/{conversation_id}/attachments

    The body is the file itself; its name comes in a ``Content-Disposition`` header
    (``attachment; filename*=UTF-8''...``), not in the URL, which proxies log. 201
    with the attachment (``released``, ``rejected`` with a reason, or ``pending``
    while its checks go on)."""
    services, principal = await person_of(request)
    conversation_id = request.match_info["conversation_id"]
    if not ID_PATTERN.fullmatch(conversation_id):
        raise BadRequest("conversation_id: invalid")
    attachment = await services.attachments.upload(
        conversation_id,
        principal.user_id,
        _file_name(request.headers.get("Content-Disposition")),
        _body(request),
        request.content_length,
    )
    return web.json_response({"ok": True, "attachment": attachment.to_wire()}, status=201)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body in pieces; a client gone midway is a bad request, not a fault
    of the hub (nobody reads the answer, and the log says which upload it was)."""
    try:
        async for piece in request.content.iter_chunked(UPLOAD_READ_BYTES):
            yield piece
    except (ConnectionError, ClientPayloadError) as exc:
        raise BadRequest("the upload was cut off") from exc


async def download(request: web.Request) -> web.StreamResponse:
    return await _serve(request, thumbnail=False)


async def thumbnail(request: web.Request) -> web.StreamResponse:
    return await _serve(request, thumbnail=True)


async def _serve(request: web.Request, *, thumbnail: bool) -> web.StreamResponse:
    """The bytes, to a member with a bearer token or a signed link; one byte range
    if asked (``Range: bytes=a-b``)."""
    attachment_id = request.match_info["attachment_id"]
    if not ID_PATTERN.fullmatch(attachment_id):
        raise BadRequest("attachment_id: invalid")
    if request.headers.get("Authorization"):
        services, principal = await person_of(request)
        attachments, user_id = services.attachments, principal.user_id
    else:
        attachments = link_clinic(request).attachments
        path = download_path(attachment_id, thumbnail)
        user_id = attachments.verify_signed(path, dict(request.query))
    attachment, stored = await attachments.open_download(attachment_id, user_id, thumbnail)
    size = stored.length
    content_type = "image/jpeg" if thumbnail else attachment.content_type
    etag = f'"{stored.file_id}"'
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": _disposition(attachment.name, inline=attachment.is_image),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "private, max-age=300",
        "Accept-Ranges": "bytes",
        "ETag": etag,
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    start, end = 0, size - 1
    status = 200
    wanted = request.headers.get("Range")
    # Several ranges are answered with the whole file (RFC 9110 allows it).
    if wanted is not None and "," not in wanted and request.headers.get("If-Range", etag) == etag:
        parsed = _parse_range(wanted, size)
        if parsed is None:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end = parsed
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start + 1 if size else 0
    await response.prepare(request)
    if request.method != "HEAD" and size:
        async for piece in stored.read(start, end + 1):
            await response.write(piece)
    await response.write_eof()
    log.info(
        "attachment=%s%s served to user=%s bytes=%d",
        attachment_id,
        " thumbnail" if thumbnail else "",
        user_id,
        end - start + 1 if size else 0,
    )
    return response


def _file_name(header: str | None) -> str:
    _, params = parse_content_disposition(header)
    return content_disposition_filename(params, "filename") or ""


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One range of ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``, clamped to the file;
    None when it cannot be satisfied."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return None
    return start, end


def _disposition(name: str, *, inline: bool) -> str:
    """RFC 6266: an ASCII fallback name, and the real one in UTF-8."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def delete_unsent(request: web.Request) -> web.Response:
    """DELETE /api/v1/attachments/{attachment_id}: the uploader withdraws an upload
    that no message carries yet (a wrong photo picked): 200; 404 for anyone else's;
    409 once a message carries it."""
    services, principal = await person_of(request)
    attachment_id = request.match_info["attachment_id"]
    if not ID_PATTERN.fullmatch(attachment_id):
        raise BadRequest("attachment_id: invalid")
    await services.attachments.delete_unsent(attachment_id, principal.user_id)
    return web.json_response({"ok": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/conversations/{conversation_id}/attachments", upload)
    app.router.add_get("/api/v1/attachments/{attachment_id}", download)
    app.router.add_delete("/api/v1/attachments/{attachment_id}", delete_unsent)
    app.router.add_get("/api/v1/attachments/{attachment_id}/thumbnail", thumbnail)
