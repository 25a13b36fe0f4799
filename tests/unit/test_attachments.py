"""What an upload is, from its bytes; names; ranges; signed links."""

from __future__ import annotations

import time

import pytest

from hub.attachments.attachments import Attachments, clean_name, renamed
from hub.attachments.inspect import FileKind, Inspector, name_for, sniff
from hub.core.errors import BadRequest, TooLarge, Unauthorized, Unavailable, UnsupportedType
from hub.core.metrics import Metrics
from hub.core.settings import AttachmentSettings
from hub.server.attachments import _disposition, _file_name, _parse_range
from tests.support.files import pdf, photo

ALL = frozenset(FileKind)


def inspect(data: bytes, chunk: int = 7, allowed: frozenset[FileKind] = ALL) -> FileKind:
    inspector = Inspector(allowed, max_bytes=10_000_000)
    for start in range(0, len(data), chunk):
        inspector.feed(data[start : start + chunk])
    return inspector.finish()


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 28, FileKind.JPEG),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 24, FileKind.PNG),
        (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 16, FileKind.WEBP),
        (b"\0\0\0\x18ftypheic" + b"\0" * 20, FileKind.HEIC),
        (b"\0\0\0\x18ftypmif1" + b"\0" * 20, FileKind.HEIC),
        (b"%PDF-1.7\n" + b"\0" * 23, FileKind.PDF),
        (b"GIF89a" + b"\0" * 26, None),
        (b"  %PDF-1.7" + b"\0" * 22, None),  # readers accept a late header; polyglots use it
        (b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 16, None),
    ],
)
def test_the_type_is_the_signature_at_offset_zero(head: bytes, kind: FileKind | None):
    assert sniff(head) is kind


def test_a_marker_split_across_chunks_is_still_found():
    data = pdf() + b"<script>x</script>"
    for chunk in (1, 3, 7, 64, 4096):
        with pytest.raises(UnsupportedType, match="polyglot"):
            inspect(data, chunk)


def test_pdf_names_that_act_are_refused_and_look_alikes_are_not():
    with pytest.raises(UnsupportedType, match="active content"):
        inspect(pdf().replace(b"/Type /Catalog", b"/Type /Catalog /AA << /O << /JS (x) >> >>"))
    with pytest.raises(UnsupportedType, match="active content"):
        inspect(pdf().replace(b"/Type /Catalog", b"/Type /Catalog /Launch"))
    # /JSomething is another name.
    assert inspect(pdf().replace(b"/Type /Catalog", b"/Type /Catalog /JSONData 1")) is FileKind.PDF


def test_size_limit_and_allowed_kinds():
    inspector = Inspector(ALL, max_bytes=100)
    inspector.feed(b"%PDF-" + b"x" * 95)
    with pytest.raises(TooLarge):
        inspector.feed(b"x")
    with pytest.raises(UnsupportedType, match="pdf files are not accepted"):
        inspect(pdf(), allowed=frozenset({FileKind.JPEG}))
    with pytest.raises(BadRequest, match="empty"):
        Inspector(ALL, 100).finish()
    assert inspect(b"%PDF-1.4\n%%EOF") is FileKind.PDF  # shorter than the sniffed head


def test_a_pdf_ends_with_its_end_marker():
    """A PDF followed by 20 MB of padding cost pypdf a second per upload to find its
    end; Acrobat wants %%EOF in the last 1 KiB too."""
    assert inspect(pdf() + b"\n" * 1000) is FileKind.PDF
    with pytest.raises(UnsupportedType, match="%%EOF"):
        inspect(pdf() + b" " * 2000)
    with pytest.raises(UnsupportedType, match="%%EOF"):
        inspect(b"%PDF-1.4 cut off")


def test_a_jpeg_is_accepted_whole_and_one_with_a_zip_is_not():
    assert inspect(photo(), chunk=65536) is FileKind.JPEG
    with pytest.raises(UnsupportedType, match="ZIP"):
        inspect(photo() + b"PK\x05\x06" + b"\0" * 18, chunk=65536)


@pytest.mark.parametrize(
    "name, kind, expected",
    [
        ("IMG_1.JPG", FileKind.JPEG, "IMG_1.JPG"),
        ("scan.jpeg", FileKind.JPEG, "scan.jpeg"),
        ("IMG_2.heic", FileKind.HEIC, "IMG_2.heic"),
        ("results 2026.11", FileKind.PDF, "results 2026.11.pdf"),
        ("noext", FileKind.PNG, "noext.png"),
        ("file.tar.gz.pdf", FileKind.PDF, "file.tar.gz.pdf"),
    ],
)
def test_names_agree_with_the_bytes(name: str, kind: FileKind, expected: str):
    assert name_for(name, kind) == expected


@pytest.mark.parametrize("name", ["photo.jpg", "a.exe", "b.html", "c.png"])
def test_a_name_that_says_another_type_is_refused(name: str):
    with pytest.raises(UnsupportedType, match="content is pdf"):
        name_for(name, FileKind.PDF)


def test_clean_names_and_heic_renamed():
    assert clean_name("C:\\Users\\jane\\Desktop\\rash.jpg") == "rash.jpg"
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("a\u202eb\x00c\n.pdf") == "abc.pdf"  # bidi override and controls gone
    assert clean_name("...") == "attachment" and clean_name("") == "attachment"
    assert len(clean_name("x" * 500 + ".pdf")) == 200
    assert renamed("IMG_0001.HEIC", FileKind.JPEG) == "IMG_0001.jpg"


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-1000", (90, 99)),
        ("bytes=100-", None),
        ("bytes=5-4", None),
        ("bytes=-0", None),
        ("bytes=-", None),
        ("items=0-9", None),
    ],
)
def test_byte_ranges(header: str, expected: tuple[int, int] | None):
    assert _parse_range(header, 100) == expected


def test_content_disposition_both_ways():
    assert _disposition('résumé "final".pdf', inline=False) == (
        'attachment; filename="r_sum_ _final_.pdf"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
    )
    assert _disposition("a.jpg", inline=True).startswith("inline;")
    assert _file_name("attachment; filename*=UTF-8''r%C3%A9sultat.pdf") == "résultat.pdf"
    assert _file_name('attachment; filename="x.jpg"') == "x.jpg"
    assert _file_name(None) == ""


def service(key: bytes | None = b"k" * 32, ttl: float = 300.0) -> Attachments:
    settings = AttachmentSettings(url_ttl=ttl)
    return Attachments(
        settings,
        key,
        "https://hub.example",
        None,
        None,
        None,
        Metrics(),
        embedded=True,  # type: ignore[arg-type]
    )


def test_signed_links_are_bound_to_path_user_and_time():
    attachments = service()
    path, expires_at = attachments.sign("att1", "pat-1", thumbnail=False)
    base, _, query = path.partition("?")
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert base == "/api/v1/attachments/att1"
    assert attachments.verify_signed(base, params) == "pat-1"
    assert abs(expires_at.timestamp() - (time.time() + 300)) < 2
    assert "pat-1" not in path  # who it is for is sealed: URLs end up in logs
    other, _ = attachments.sign("att1", "pat-2", thumbnail=False)
    theirs = dict(part.split("=", 1) for part in other.partition("?")[2].split("&"))
    with pytest.raises(Unauthorized, match="signature"):
        attachments.verify_signed(base, {**params, "for": theirs["for"]})
    with pytest.raises(Unauthorized, match="signature"):
        attachments.verify_signed(base + "/thumbnail", params)
    with pytest.raises(Unauthorized, match="signature"):
        service(key=b"o" * 32).verify_signed(base, params)
    with pytest.raises(Unauthorized):
        attachments.verify_signed(base, {"for": params["for"]})
    expired = service(ttl=0.001)
    path, _ = expired.sign("att1", "pat-1", thumbnail=False)
    params = dict(part.split("=", 1) for part in path.partition("?")[2].split("&"))
    with pytest.raises(Unauthorized, match="expired"):
        expired.verify_signed(base, params)
    with pytest.raises(Unavailable, match="HUB_ATTACHMENT_URL_KEY"):
        service(key=None).sign("att1", "pat-1", thumbnail=False)
