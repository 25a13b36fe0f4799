"""Files the attachment tests upload: photos with GPS in their EXIF, PDFs, and the
malformed ones (spoofed, polyglots, bombs, truncated)."""

from __future__ import annotations

import io
import struct
import zlib

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()

GPS_IFD = 0x8825
GPS_LATITUDE = 2
CAMERA_SERIAL = 0xA431  # BodySerialNumber


def photo(kind: str = "JPEG", size: tuple[int, int] = (1200, 900), orientation: int = 1) -> bytes:
    """A photo as a phone writes it: EXIF with GPS coordinates and a camera serial."""
    image = Image.new("RGB", size)
    for x in range(0, size[0], 50):  # some structure, so it is not all one colour
        image.paste((x % 256, 80, 160), (x, 0, x + 25, size[1]))
    exif = Image.Exif()
    exif[CAMERA_SERIAL] = "SN-4F2A-99"
    exif[0x0112] = orientation
    exif.get_ifd(GPS_IFD)[GPS_LATITUDE] = (48.0, 51.0, 24.0)
    exif.get_ifd(GPS_IFD)[1] = "N"
    out = io.BytesIO()
    image.save(out, format=kind, exif=exif, quality=85)
    return out.getvalue()


def pdf(text: str = "Discharge instructions", padding: int = 0) -> bytes:
    """A small, valid PDF of one page (its stream uncompressed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() + b" " * padding
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer << /Size {len(objects) + 1} /Root 1 0 R >>\n".encode())
    out.write(f"startxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression
    bomb's header: decoding it would allocate width * height pixels)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)
