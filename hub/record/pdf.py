"""The patient's conversations as a PDF, for people: a heading per conversation, each
message with its sender and time, wrapped to the page.

ReportLab's canvas keeps the pages it made in memory until the end (about 40 KB per
1,000 messages of text, measured); attachments appear by name, their bytes are in
the FHIR bundle. (fpdf2 was tried first: its line breaking took 1-16 ms per message,
against 0.16 ms here.)
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any

from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from hub.core.protocol import iso

# A TrueType font with the scripts patients write in; the PDF core fonts have Latin-1
# only. Debian's fonts-dejavu-core puts it here.
DEFAULT_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
)
MARGIN = 40.0


def find_font(configured: str | None) -> str | None:
    if configured:
        return configured
    return next((f for f in DEFAULT_FONTS if Path(f).is_file()), None)


class ConversationPdf:
    def __init__(self, title: str, clinic_name: str, font: str | None) -> None:
        self._buffer = io.BytesIO()
        self._canvas = Canvas(self._buffer, pagesize=A4, pageCompression=1)
        self._canvas.setTitle(title)
        self._canvas.setCreator(clinic_name)
        self._width, self._height = A4
        self._y = self._height - MARGIN
        if font is not None:
            family = f"hub-{Path(font).stem}"
            if family not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(family, font))
            self._family, self._latin1 = family, False
        else:
            self._family, self._latin1 = "Helvetica", True
        self._text(title, size=16)
        self._y -= 6

    def conversation(self, heading: str) -> None:
        self._y -= 10
        self._text(heading, size=13)

    def message(self, sender: str, sent: datetime, body: str, note: str = "") -> None:
        self._text(f"{sender} - {iso(sent)}{f' ({note})' if note else ''}", size=8)
        if body:
            self._text(body, size=10)
        self._y -= 4

    def output(self) -> bytes:
        self._canvas.save()
        return self._buffer.getvalue()

    def _text(self, text: str, *, size: float) -> None:
        if self._latin1:  # without a TrueType font: what Latin-1 lacks becomes "?"
            text = text.encode("latin-1", "replace").decode("latin-1")
        leading = size * 1.3
        for paragraph in text.splitlines() or [""]:
            for line in simpleSplit(paragraph, self._family, size, self._width - 2 * MARGIN) or [
                ""
            ]:
                if self._y < MARGIN + leading:
                    self._canvas.showPage()
                    self._y = self._height - MARGIN
                self._canvas.setFont(self._family, size)
                self._canvas.drawString(MARGIN, self._y - size, line)
                self._y -= leading


def sender_label(message: dict[str, Any], patient_id: str, names: dict[str, str]) -> str:
    if message["sender_id"] == patient_id:
        return "You"
    return message.get("sender_name") or names.get(message["sender_id"]) or "The clinic"
