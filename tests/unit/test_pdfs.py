"""PDFs parsed before they are served: active content wherever the format hides it,
and what cannot be checked within bounds is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from hub.attachments.pdfs import PdfRefused, check
from tests.support.files import pdf, pdf_with_object_stream


def refusal(tmp_path: Path, data: bytes, timeout: float = 10.0) -> str | None:
    path = tmp_path / "upload.pdf"
    path.write_bytes(data)
    try:
        check(path, timeout)
    except PdfRefused as exc:
        return exc.message
    return None


@pytest.mark.parametrize(
    "catalog, hidden",
    [
        (b"/OpenAction 5 0 R", b"<< /S /JavaScript /JS (app.alert(1)) >>"),
        (b"/AA 5 0 R", b"<< /O << /S /Launch /F (calc.exe) >> >>"),
        (b"/OpenAction 5 0 R", b"<< /S /J#61vaScript /J#53 (x) >>"),  # escaped names
        (b"/AcroForm 5 0 R", b"<< /Fields [] /XFA 6 0 R >>"),
        (b"/Names 5 0 R", b"<< /EmbeddedFiles << /Names [] >> >>"),
        (b"", b"<< /Type /RichMedia >>"),  # not referenced from anywhere: still read
    ],
)
def test_active_content_in_a_compressed_object_stream_is_refused(
    tmp_path: Path, catalog: bytes, hidden: bytes
):
    assert "active content" in (refusal(tmp_path, pdf_with_object_stream(catalog, hidden)) or "")


def test_plain_pdfs_pass_and_look_alike_names_are_not_active(tmp_path: Path):
    assert refusal(tmp_path, pdf()) is None
    assert refusal(tmp_path, pdf_with_object_stream(b"/JSONData 1 /Lang (en)")) is None
    link = b"<< /S /URI /URI (https://clinic.example/results) >>"  # a link is not a script
    assert refusal(tmp_path, pdf_with_object_stream(b"/OpenAction 5 0 R", link)) is None


def test_what_cannot_be_checked_is_refused(tmp_path: Path):
    assert refusal(tmp_path, b"%PDF-1.7\n" + b"\x00garbage" * 100) == "the PDF cannot be read"
    locked = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf())))
    locked.encrypt(user_password="secret", owner_password="owner")
    out = io.BytesIO()
    locked.write(out)
    assert refusal(tmp_path, out.getvalue()) == "password-protected PDFs are not accepted"


def test_a_decompression_bomb_in_an_object_stream_is_refused_not_inflated(tmp_path: Path):
    """200 MB of zeros in 200 KB: pypdf stops at its 75 MB limit, and the PDF is refused."""
    bomb = pdf_with_object_stream(b"", zeros=200_000_000)
    assert len(bomb) < 1_000_000
    assert refusal(tmp_path, bomb) == "the PDF cannot be read"


def test_the_deadline_bounds_the_time(tmp_path: Path):
    assert refusal(tmp_path, pdf_with_object_stream(b""), timeout=-1.0) == (
        "the PDF took too long to check"
    )
