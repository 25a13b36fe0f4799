"""Attachments: upload, quarantine, release, attach to a message, download.

What this promises:

* An upload is streamed to GridFS as it arrives; the hub holds one chunk of it at a
  time, never the whole file. Its type comes from its bytes (:mod:`.inspect`); a
  file refused there, or larger than the limit, is deleted before anyone sees it.
* A stored upload is ``pending`` until checked: scanned by ``clamd`` (when one is
  configured), and, for images, decoded and re-encoded without their metadata
  (:mod:`.images`). Only then is it ``released``; a file that fails is ``rejected``,
  its bytes deleted, the reason audited. A scanner that cannot answer leaves the
  upload pending, checked again every ``retry_after`` seconds, by any hub.
* The uploader's devices hear of every state change (``attachment:updated``).
* Only the uploader may send a released attachment, in its own conversation, in
  one message. Only members of the conversation may download it, with their token
  or a signed link that expires.

Logs carry attachment ids, kinds and sizes; never file names or content.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import tempfile
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.attachments import images, pdfs
from hub.attachments.inspect import FileKind, Inspector, name_for, sniff
from hub.attachments.scanner import Clamd
from hub.core import clock
from hub.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from hub.core.metrics import Metrics
from hub.core.records import Attachment, AttachmentState
from hub.core.settings import AttachmentSettings
from hub.core.tasks import TaskGroup
from hub.core.tenants import DEFAULT_TENANT
from storage.attachments import CHUNK_BYTES, UPLOAD_GIVEN_UP_AFTER, AttachmentStore, GridFile
from storage.conversations import ConversationRepository

log = logging.getLogger(__name__)

CHECK_WAIT = 10.0  # an upload's answer waits this long for its checks, then says pending
QUOTA_PERIOD = timedelta(hours=24)  # HUB_ATTACHMENT_DAILY_BYTES counts a rolling day
QUOTA_REACHED = "the daily upload quota is used up: try again later"
CHECKS_PER_ROUND = 20
MAX_NAME_CHARS = 200
DEFAULT_NAME = "attachment"

OnChange = Callable[[Attachment], Awaitable[None]]


class Attachments:
    def __init__(
        self,
        settings: AttachmentSettings,
        url_key: bytes | None,
        public_base_url: str,
        store: AttachmentStore,
        conversations: ConversationRepository,
        on_change: OnChange,
        metrics: Metrics,
        *,
        embedded: bool,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.settings = settings
        self.store = store
        self._tenant = tenant  # named in, and signed with, every link
        self._url_key = url_key
        self._base_url = public_base_url
        self._conversations = conversations
        self._on_change = on_change
        self._metrics = metrics
        self._allowed = frozenset(FileKind(k) for k in settings.kinds)
        self.scanner = (
            Clamd(settings.clamd_url, settings.clamd_timeout) if settings.clamd_url else None
        )
        # Without a scanner, uploads are accepted unchecked for malware only where someone
        # said so: the embedded development hub, or HUB_ATTACHMENTS_UNSCANNED=1.
        self.accepting = self.scanner is not None or settings.unscanned or embedded
        self._checks = TaskGroup("attachment check")
        # Image decoding is CPU-bound and memory-hungry: two at a time per hub.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="image")
        # A check holds its upload this long before another hub may take it over.
        self._lease = settings.clamd_timeout + settings.process_timeout + 60.0

    def describe(self) -> str:
        """One line for the start-up log: how uploads are checked."""
        links = "" if self._url_key else "; no signed links (set HUB_ATTACHMENT_URL_KEY)"
        return self._describe_checks() + links

    def _describe_checks(self) -> str:
        if self.scanner is not None:
            return f"attachments are scanned by clamd at {self.scanner.url}"
        if self.accepting:
            return "attachments are accepted UNSCANNED for malware (development only)"
        return (
            "attachments are refused: no malware scanner (set HUB_CLAMD_URL, or "
            "HUB_ATTACHMENTS_UNSCANNED=1 to accept them unscanned)"
        )

    async def close(self) -> None:
        await self._checks.close(timeout=2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- upload ----------------------------------------------------------------------

    async def upload(
        self,
        conversation_id: str,
        user_id: str,
        name: str,
        chunks: AsyncIterator[bytes],
        declared_size: int | None = None,
    ) -> Attachment:
        """Store an upload and start its checks; answer once they are done, or after
        ``CHECK_WAIT`` seconds with the upload still ``pending``.

        Raises TooLarge, UnsupportedType (nothing is kept), NotFound (not a member),
        RateLimited (the person's daily quota, ``HUB_ATTACHMENT_DAILY_BYTES``, would be
        passed), Unavailable (no scanner configured, or MongoDB failed)."""
        if not self.accepting:
            raise Unavailable("attachments are not accepted: the hub has no malware scanner")
        await self._conversations.require_member(conversation_id, user_id)
        inspector = Inspector(self._allowed, self.settings.max_bytes)
        if declared_size is not None and declared_size > self.settings.max_bytes:
            self._metrics.attachments.labels("refused").inc()
            raise TooLarge(f"the file is larger than {self.settings.max_bytes} bytes")
        room = self.settings.daily_bytes - await self.store.uploaded_since(
            user_id, clock.now() - QUOTA_PERIOD
        )
        if room <= 0 or (declared_size is not None and declared_size > room):
            self._metrics.attachments.labels("refused").inc()
            raise RateLimited(QUOTA_REACHED)
        attachment_id = uuid.uuid4().hex
        writer = await self.store.begin_upload(
            attachment_id, conversation_id, user_id, clean_name(name)
        )
        try:
            async for chunk in chunks:
                inspector.feed(chunk)
                if inspector.size > room:
                    raise RateLimited(QUOTA_REACHED)
                await writer.write(chunk)
            kind = inspector.finish()
            checked_name = name_for(clean_name(name), kind)
            await writer.close()
        except BaseException as exc:
            self._metrics.attachments.labels("refused").inc()
            try:
                await asyncio.shield(self.store.abort_upload(attachment_id, writer))
            except Unavailable:  # MongoDB is gone: the sweep deletes what is left
                pass
            log.info(
                "attachment=%s refused at upload after %d bytes: %s",
                attachment_id,
                inspector.size,
                getattr(exc, "code", type(exc).__name__),
            )
            raise
        self._metrics.attachment_bytes.inc(inspector.size)
        attachment = await self.store.finish_upload(
            attachment_id, checked_name, kind.mime, inspector.size
        )
        log.info(
            "attachment=%s uploaded conversation=%s user=%s kind=%s bytes=%d",
            attachment_id,
            conversation_id,
            user_id,
            kind.value,
            inspector.size,
        )
        check = self._checks.spawn(self.check(attachment_id))
        await asyncio.wait({check}, timeout=CHECK_WAIT)
        return await self.store.get(attachment_id) or attachment

    # -- checks ----------------------------------------------------------------------

    async def check(self, attachment_id: str | None = None) -> Attachment | None:
        """Check one pending upload (that one, or the oldest whose turn it is); the
        attachment as it is after, or None when there was nothing to check."""
        attachment = await self.store.claim_check(attachment_id, self._lease)
        if attachment is None:
            return None
        try:
            settled = await self._check(attachment)
        except Unavailable as exc:  # the scanner (ScannerUnavailable) or MongoDB
            self._metrics.attachments.labels("deferred").inc()
            log.warning(
                "attachment=%s stays pending, checked again in %.0fs: %s",
                attachment.attachment_id,
                self.settings.retry_after,
                exc.message,
            )
            try:
                await self.store.postpone_check(attachment.attachment_id, self.settings.retry_after)
            except Unavailable:
                pass  # the lease runs out instead
            return attachment
        if settled is not None:
            self._metrics.attachments.labels(settled.state.value).inc()
            await self._on_change(settled)
        return settled

    async def check_waiting(self) -> None:
        """Check the uploads whose turn it is (a scanner back, a hub that died mid-check)."""
        for _ in range(CHECKS_PER_ROUND):
            if await self.check() is None:
                return

    async def _check(self, attachment: Attachment) -> Attachment | None:
        with tempfile.TemporaryDirectory(prefix="hub-attachment-") as scratch:
            source = Path(scratch) / "upload"
            await self._download(attachment, source)
            head = await asyncio.to_thread(_read_head, source)
            kind = sniff(head)
            if kind is None:  # the upload was sniffed on the way in: this is a damaged copy
                return await self._reject(attachment, "the file is damaged")
            if self.scanner is not None:
                started = time.perf_counter()
                verdict = await self.scanner.scan(_read_chunks(source))
                self._metrics.attachment_check_seconds.labels("scan").observe(
                    time.perf_counter() - started
                )
                if not verdict.clean:
                    log.warning(
                        "attachment=%s rejected: malware %s",
                        attachment.attachment_id,
                        verdict.signature,
                    )
                    return await self._reject(
                        attachment, "the file failed the malware scan", signature=verdict.signature
                    )
            if kind is FileKind.PDF:
                refused = await self._check_pdf(source)
                if refused is not None:
                    return await self._reject(attachment, refused)
            if not kind.is_image:
                return await self.store.release(
                    attachment,
                    file_id=attachment.file_id,
                    content_type=kind.mime,
                    size=attachment.size,
                )
            return await self._release_image(attachment, kind, source, Path(scratch))

    async def _check_pdf(self, source: Path) -> str | None:
        """Why the PDF is refused (hub/attachments/pdfs.py), or None: parsed on the
        worker threads, within ``HUB_ATTACHMENT_PROCESS_TIMEOUT``."""
        started = time.perf_counter()
        timeout = self.settings.process_timeout
        work = asyncio.get_running_loop().run_in_executor(self._pool, pdfs.check, source, timeout)
        try:
            await asyncio.wait_for(work, timeout + 1.0)
        except pdfs.PdfRefused as exc:
            return exc.message
        except TimeoutError:
            return "the PDF took too long to check"
        finally:
            self._metrics.attachment_check_seconds.labels("pdf").observe(
                time.perf_counter() - started
            )
        return None

    async def _release_image(
        self, attachment: Attachment, kind: FileKind, source: Path, scratch: Path
    ) -> Attachment | None:
        started = time.perf_counter()
        work = asyncio.get_running_loop().run_in_executor(
            self._pool, images.process, source, kind, self.settings.max_pixels, scratch
        )
        try:
            processed = await asyncio.wait_for(work, self.settings.process_timeout)
        except images.ImageRefused as exc:
            return await self._reject(attachment, exc.message)
        except TimeoutError:
            return await self._reject(attachment, "the image took too long to decode")
        self._metrics.attachment_check_seconds.labels("image").observe(
            time.perf_counter() - started
        )
        file_id, size = await self.store.store_file(
            _read_chunks(processed.image), attachment.attachment_id
        )
        thumbnail_id, _ = await self.store.store_file(
            _read_chunks(processed.thumbnail), f"{attachment.attachment_id}.thumbnail"
        )
        return await self.store.release(
            attachment,
            file_id=file_id,
            content_type=processed.kind.mime,
            size=size,
            width=processed.width,
            height=processed.height,
            thumbnail_id=thumbnail_id,
            name=None if processed.kind is kind else renamed(attachment.name, processed.kind),
        )

    async def _reject(
        self, attachment: Attachment, reason: str, **audit: str | None
    ) -> Attachment | None:
        log.info("attachment=%s rejected: %s", attachment.attachment_id, reason)
        return await self.store.reject(attachment, reason, **audit)

    async def _download(self, attachment: Attachment, target: Path) -> None:
        stored = await self.store.open_file(attachment.file_id)
        with target.open("wb") as handle:
            async for chunk in stored.read():
                await asyncio.to_thread(handle.write, chunk)

    # -- messages --------------------------------------------------------------------

    async def delete_unsent(self, attachment_id: str, user_id: str) -> None:
        """The uploader withdraws an upload no message carries: its record and bytes go.
        NotFound for anyone else's; Conflict once a message carries it (retract the
        message instead)."""
        taken = await self.store.take_unsent(attachment_id, user_id)
        if taken is None:
            existing = await self.store.get(attachment_id)
            if existing is not None and existing.uploader_id == user_id:
                raise Conflict("a message carries it: retract the message instead")
            raise NotFound("no such upload of yours")
        await self.store.delete_files(
            [f for f in (taken.file_id, taken.thumbnail_id) if f is not None]
        )
        log.info("attachment=%s deleted unsent by user=%s", attachment_id, user_id)

    async def for_message(
        self, conversation_id: str, sender_id: str, client_id: str, attachment_ids: list[str]
    ) -> tuple[dict[str, Any], ...]:
        """Take released attachments for the message ``client_id`` (again, for a resend);
        their summaries, in the order given. Raises BadRequest, NotFound, Forbidden or
        Conflict naming the attachment that cannot go."""
        if len(attachment_ids) > self.settings.per_message:
            raise BadRequest(f"attachment_ids: at most {self.settings.per_message} a message")
        if len(set(attachment_ids)) != len(attachment_ids):
            raise BadRequest("attachment_ids: the same attachment twice")
        found = await self.store.get_many(attachment_ids)
        for attachment_id in attachment_ids:
            attachment = found.get(attachment_id)
            if attachment is None or attachment.conversation_id != conversation_id:
                raise NotFound(f"attachment {attachment_id}: not in this conversation")
            if attachment.uploader_id != sender_id:
                raise Forbidden(f"attachment {attachment_id}: only its uploader may send it")
            if attachment.state is AttachmentState.PENDING:
                raise Conflict(f"attachment {attachment_id}: still being checked")
            if attachment.state is not AttachmentState.RELEASED:
                raise Conflict(f"attachment {attachment_id}: {attachment.state.value}")
            if attachment.attached_to not in (None, client_id):
                raise Conflict(f"attachment {attachment_id}: already sent in another message")
        taken = await self.store.attach(attachment_ids, sender_id, client_id)
        if taken != len(attachment_ids):  # another message took one meanwhile
            await self.store.detach(attachment_ids, client_id)
            raise Conflict("attachment_ids: one was sent in another message meanwhile")
        return tuple(found[a].summary() for a in attachment_ids)

    async def sent(self, attachment_ids: list[str], client_id: str) -> None:
        """The message carrying them is stored."""
        await self.store.confirm(attachment_ids, client_id)

    # -- download --------------------------------------------------------------------

    def sign(self, attachment_id: str, user_id: str, thumbnail: bool) -> tuple[str, datetime]:
        """A download path for ``user_id``, valid for ``url_ttl`` seconds."""
        return self.sign_path(download_path(attachment_id, thumbnail), user_id)

    def sign_path(self, path: str, user_id: str) -> tuple[str, datetime]:
        """``path`` with a signature for ``user_id``, valid for ``url_ttl`` seconds (also
        the links of exports: one key and one check for every download link)."""
        expires = int(clock.timestamp() + self.settings.url_ttl)
        signature = self._signature(path, user_id, expires)
        clinic = "" if self._tenant == DEFAULT_TENANT else f"&tenant={self._tenant}"
        return (
            f"{path}?for={self._seal(user_id)}&expires={expires}{clinic}&signature={signature}",
            datetime.fromtimestamp(expires, UTC),
        )

    def absolute(self, path: str) -> str:
        return self._base_url + path

    def verify_signed(self, path: str, query: dict[str, str]) -> str:
        """The user a signed link was made for; Unauthorized if forged or expired."""
        try:
            sealed, expires = query["for"], int(query["expires"])
            signature = query["signature"]
        except (KeyError, ValueError):
            raise Unauthorized("a download needs a bearer token or a signed link") from None
        user_id = self._unseal(sealed)
        if not hmac.compare_digest(signature, self._signature(path, user_id, expires)):
            raise Unauthorized("the link's signature does not match")
        if expires < clock.timestamp():
            raise Unauthorized("the link has expired: ask for a new one")
        return user_id

    async def downloadable(self, attachment_id: str, user_id: str, thumbnail: bool) -> Attachment:
        """A released attachment of a conversation ``user_id`` is a member of. NotFound
        for anyone else (whether it exists is not said), Conflict while it is pending."""
        attachment = await self.store.get(attachment_id)
        if attachment is None:
            raise NotFound("no such attachment")
        try:
            await self._conversations.require_member(attachment.conversation_id, user_id)
        except Forbidden:
            raise NotFound("no such attachment") from None
        if attachment.attached_to is None and user_id != attachment.uploader_id:
            # Not sent yet: the uploader may still delete it; nobody else has seen it.
            raise NotFound("no such attachment")
        if attachment.state is AttachmentState.PENDING:
            raise Conflict("the attachment is still being checked")
        if attachment.state is not AttachmentState.RELEASED:
            raise NotFound(f"the attachment was {attachment.state.value}")
        if thumbnail and attachment.thumbnail_id is None:
            raise NotFound("this attachment has no thumbnail")
        return attachment

    async def open_download(
        self, attachment_id: str, user_id: str, thumbnail: bool
    ) -> tuple[Attachment, GridFile]:
        """:meth:`downloadable`, and its bytes opened."""
        attachment = await self.downloadable(attachment_id, user_id, thumbnail)
        file_id = attachment.thumbnail_id if thumbnail else attachment.file_id
        return attachment, await self.store.open_file(file_id)

    def _seal(self, user_id: str) -> str:
        """Who a link is for, encrypted (AES-GCM): proxies and servers log URLs, and a
        person's id in one would tell who downloaded what."""
        if self._url_key is None:
            raise Unavailable("signed links are off: the hub has no HUB_ATTACHMENT_URL_KEY")
        nonce = os.urandom(12)
        sealed = AESGCM(self._seal_key()).encrypt(nonce, user_id.encode(), b"link-subject")
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def _unseal(self, sealed: str) -> str:
        if self._url_key is None:
            raise Unavailable("signed links are off: the hub has no HUB_ATTACHMENT_URL_KEY")
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            opened = AESGCM(self._seal_key()).decrypt(raw[:12], raw[12:], b"link-subject")
            return opened.decode()
        except (ValueError, InvalidTag, UnicodeDecodeError):
            raise Unauthorized("the link's signature does not match") from None

    def _seal_key(self) -> bytes:
        assert self._url_key is not None
        return hmac.digest(self._url_key, b"hub link subjects", hashlib.sha256)

    def _signature(self, path: str, user_id: str, expires: int) -> str:
        if self._url_key is None:
            raise Unavailable("signed links are off: the hub has no HUB_ATTACHMENT_URL_KEY")
        # The clinic is signed too: a link of one clinic opens nothing in another.
        clinic = "" if self._tenant == DEFAULT_TENANT else f"{self._tenant}\n"
        text = f"{clinic}{path}\n{user_id}\n{expires}".encode()
        digest = hmac.digest(self._url_key, text, hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    # -- sweep -----------------------------------------------------------------------

    async def sweep(self, cut_off_after: timedelta = UPLOAD_GIVEN_UP_AFTER) -> int:
        """Delete orphaned uploads: never sent within ``orphan_after``, or cut off (still
        ``uploading`` after ``cut_off_after``: the client or its hub went away)."""
        orphans = await self.store.orphans(self.settings.orphan_after, cut_off_after)
        if orphans:
            await self.store.delete(orphans)
            self._metrics.attachments.labels("deleted").inc(len(orphans))
            log.info("attachments: %d orphaned uploads deleted", len(orphans))
        return len(orphans)


def download_path(attachment_id: str, thumbnail: bool) -> str:
    path = f"/api/v1/attachments/{attachment_id}"
    return path + "/thumbnail" if thumbnail else path


def renamed(name: str, kind: FileKind) -> str:
    """``IMG_0001.HEIC`` stored as JPEG is ``IMG_0001.jpg``."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem}.{'jpg' if kind is FileKind.JPEG else kind.value}"


def clean_name(name: str) -> str:
    """A file name fit to show and to put in a header: its last path part, printable
    characters only, at most 200 of them."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c for c in base if unicodedata.category(c)[0] not in "CZ" or c == " ")
    return printable.strip().strip(".")[:MAX_NAME_CHARS] or DEFAULT_NAME


def _read_head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(64)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()
