"""What an upload is, decided from its bytes alone, while it streams in.

The client's file name and ``Content-Type`` are never trusted: the first bytes say
the type (its signature at offset 0), and the whole stream is searched for another
format hiding inside (a polyglot: a file that one program reads as a PDF and a
browser as HTML, or one that carries a ZIP archive in its tail). Images are
re-encoded afterwards, so what is served of them is the decoder's output alone;
PDFs are stored as they are, so they are held to more: no active content (scripts,
launch actions, embedded files) in their uncompressed objects here, as the bytes
stream in, and none in any object once the whole file is parsed (``pdfs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hub.core.errors import BadRequest, TooLarge, UnsupportedType

SNIFF_BYTES = 32  # enough for every signature below


class FileKind(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    HEIC = "heic"
    PDF = "pdf"

    @property
    def mime(self) -> str:
        return _MIME[self]

    @property
    def is_image(self) -> bool:
        return self is not FileKind.PDF


_MIME = {
    FileKind.JPEG: "image/jpeg",
    FileKind.PNG: "image/png",
    FileKind.WEBP: "image/webp",
    FileKind.HEIC: "image/heic",
    FileKind.PDF: "application/pdf",
}
# ISO base media file brands of HEIF images (HEIC is HEIF with HEVC inside).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


_EXTENSIONS = {
    FileKind.JPEG: {"jpg", "jpeg", "jpe", "jfif"},
    FileKind.PNG: {"png"},
    FileKind.WEBP: {"webp"},
    FileKind.HEIC: {"heic", "heif", "hif"},
    FileKind.PDF: {"pdf"},
}


def name_for(name: str, kind: FileKind) -> str:
    """The file's name, checked against what its bytes are: a name whose extension
    says another type (``scan.pdf`` holding a JPEG, ``photo.jpg`` holding a PDF,
    ``notes.exe``) is refused; a name without one gets the right one."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or not extension.isalpha() or len(extension) > 5:
        return f"{name}.{min(_EXTENSIONS[kind], key=len)}"
    if extension.lower() not in _EXTENSIONS[kind]:
        raise UnsupportedType(f"the file's name says .{extension} but its content is {kind.value}")
    return name


def sniff(head: bytes) -> FileKind | None:
    """The kind whose signature the file starts with, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return FileKind.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FileKind.WEBP
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return FileKind.HEIC
    if head.startswith(b"%PDF-"):
        return FileKind.PDF
    return None


# Markers of another format inside the file, searched case-insensitively. Chosen long
# enough that compressed image data does not hold one by chance.
_FOREIGN = (b"<script", b"<html", b"<!doctype html", b"<svg", b"<iframe", b"<?php")
_FOREIGN_IN_IMAGE = (*_FOREIGN, b"%pdf-")
# Names of PDF objects that act rather than show.
_ACTIVE_PDF = (b"/javascript", b"/js", b"/launch", b"/embeddedfile", b"/richmedia", b"/xfa")
_ZIP_END = b"PK\x05\x06"  # a ZIP archive's end record: in its last 64 KiB
_ZIP_TAIL = 65_557
_PDF_END = 1024  # a PDF's %%EOF marker is within its last 1 KiB
_OVERLAP = 32  # longest marker, so a marker split across two chunks is still found


@dataclass(slots=True)
class Inspector:
    """Fed the upload chunk by chunk; raises as soon as it knows the file is refused.

    Holds at most one chunk plus a 64 KiB tail, whatever the file's size.
    """

    allowed: frozenset[FileKind]
    max_bytes: int
    kind: FileKind | None = None
    size: int = 0
    _head: bytes = b""
    _carry: bytes = b""
    _tail: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"the file is larger than {self.max_bytes} bytes")
        if self.kind is None:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            if len(self._head) < SNIFF_BYTES:
                self._carry += chunk
                return
            self._decide()
            chunk, self._carry = self._carry + chunk, b""
        self._search(chunk)

    def finish(self) -> FileKind:
        """Call after the last chunk: the file's kind, or raises."""
        if self.kind is None:
            if not self._head:
                raise BadRequest("the file is empty")
            self._decide()
            self._search(self._carry)
            self._carry = b""
        if _ZIP_END in self._tail:
            raise UnsupportedType("the file carries a ZIP archive")
        if self.kind is FileKind.PDF and b"%%EOF" not in self._tail[-_PDF_END:]:
            # What Acrobat requires too; a PDF followed by megabytes of anything also
            # cost its parser a second per file (pypdf looks for the end line by line).
            raise UnsupportedType("the PDF does not end with %%EOF in its last 1 KiB")
        assert self.kind is not None
        return self.kind

    def _decide(self) -> None:
        kind = sniff(self._head)
        if kind is None:
            raise UnsupportedType(
                "the file is none of: " + ", ".join(sorted(k.value for k in self.allowed))
            )
        if kind not in self.allowed:
            raise UnsupportedType(f"{kind.value} files are not accepted here")
        self.kind = kind

    def _search(self, chunk: bytes) -> None:
        window = (self._tail[-_OVERLAP:] + chunk).lower()
        markers = _FOREIGN if self.kind is FileKind.PDF else _FOREIGN_IN_IMAGE
        for marker in markers:
            if marker in window:
                raise UnsupportedType("the file hides another format (a polyglot)")
        if self.kind is FileKind.PDF:
            for name in _ACTIVE_PDF:
                if _has_pdf_name(window, name):
                    raise UnsupportedType("the PDF holds active content (scripts or actions)")
        self._tail = (self._tail + chunk)[-_ZIP_TAIL:]


def _has_pdf_name(window: bytes, name: bytes) -> bool:
    """``name`` as a whole PDF name: ``/JS`` but not ``/JSomething``."""
    start = window.find(name)
    while start != -1:
        after = window[start + len(name) : start + len(name) + 1]
        if not after or not (after.isalnum() or after in b"#_-."):
            return True
        start = window.find(name, start + 1)
    return False
